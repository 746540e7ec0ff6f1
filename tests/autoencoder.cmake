# The KL autoencoder of latent diffusion (model/autoencoder.h, trainer/autoencoder_trainer.h,
# `difftrain autoencoder`): unit tests, and end-to-end tests of the binary (training, resume,
# ranks, export checked in Debian's python3-torch, eval, bad input).
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
add_executable(test_autoencoder ${CMAKE_CURRENT_LIST_DIR}/test_autoencoder.cpp)
difftrain_use_torch_pch(test_autoencoder)
target_link_libraries(test_autoencoder PRIVATE difftrain_trainer GTest::gtest_main)
gtest_discover_tests(test_autoencoder DISCOVERY_TIMEOUT 60)

difftrain_python_tests(autoencoder autoencoder_tests.py 300 Train Resume Ranks Export BadInput)
set_tests_properties(autoencoder.Ranks PROPERTIES PROCESSORS 2)
