# Tests of make-shards (data/make_shards.h, data/image_decode.h, cli/make_shards_command.h).
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
add_executable(test_make_shards ${CMAKE_CURRENT_LIST_DIR}/test_make_shards.cpp)  # CSV, listing, labels, chunks, plan
target_link_libraries(test_make_shards PRIVATE difftrain_make_shards GTest::gtest_main)
gtest_discover_tests(test_make_shards TEST_PREFIX "make_shards." PROPERTIES TIMEOUT 120)

# End to end against an independent PIL decode (Debian's python3-pil, python3-h5py).
difftrain_python_tests(make_shards make_shards_tests.py 300 Decode Inputs Ranks Resume)
set_tests_properties(make_shards.Ranks PROPERTIES PROCESSORS 2)
