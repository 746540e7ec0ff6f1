# Unit tests of config, model, diffusion and trainer pieces, and the 2-rank MPI test.
set(DIFFTRAIN_MPIRUN ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe)

add_executable(test_core
  ${CMAKE_CURRENT_LIST_DIR}/test_config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_model.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_diffusion.cpp)
difftrain_use_torch_pch(test_core)
target_link_libraries(test_core PRIVATE difftrain_trainer GTest::gtest_main)
gtest_discover_tests(test_core DISCOVERY_TIMEOUT 60)

add_executable(test_trainer_units ${CMAKE_CURRENT_LIST_DIR}/test_trainer_units.cpp)
difftrain_use_torch_pch(test_trainer_units)
target_link_libraries(test_trainer_units PRIVATE difftrain_trainer GTest::gtest)
gtest_discover_tests(test_trainer_units DISCOVERY_TIMEOUT 60)

add_executable(test_mpi_collectives ${CMAKE_CURRENT_LIST_DIR}/test_mpi_collectives.cpp)
difftrain_use_torch_pch(test_mpi_collectives)
target_link_libraries(test_mpi_collectives PRIVATE difftrain_trainer GTest::gtest)
add_test(NAME mpi_collectives_2_ranks COMMAND ${DIFFTRAIN_MPIRUN} -np 2 $<TARGET_FILE:test_mpi_collectives>)
set_tests_properties(mpi_collectives_2_ranks PROPERTIES TIMEOUT 120 PROCESSORS 2)
