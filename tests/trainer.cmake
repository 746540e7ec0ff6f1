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

# The NCCL backend is only linked in CUDA builds; on CPU machines that have the
# CUDA toolkit headers, at least compile it against LibTorch's CUDA headers so
# it cannot silently rot. (Debian's CPU LibTorch lacks one generated header,
# cuda_cmake_macros.h, which an empty stand-in replaces for this check.)
find_path(DIFFTRAIN_NCCL_HEADER_DIR nccl.h HINTS /usr/local/cuda/include)
if(NOT DIFFTRAIN_WITH_NCCL AND DIFFTRAIN_NCCL_HEADER_DIR AND EXISTS ${DIFFTRAIN_NCCL_HEADER_DIR}/cuda_runtime_api.h)
  set(shim ${CMAKE_CURRENT_BINARY_DIR}/cuda_header_shim)
  file(WRITE ${shim}/c10/cuda/impl/cuda_cmake_macros.h "#pragma once\n")
  set(torch_api_include)
  foreach(dir ${TORCH_INCLUDE_DIRS} ${MPI_CXX_INCLUDE_DIRS})
    if(NOT dir STREQUAL "/usr/include")  # a system dir as -isystem breaks libstdc++'s include_next
      list(APPEND torch_api_include -isystem ${dir})
    endif()
  endforeach()
  add_test(NAME nccl_backend_compiles
    COMMAND ${CMAKE_CXX_COMPILER} -std=c++17 -fsyntax-only -DDIFFTRAIN_WITH_NCCL -I${CMAKE_SOURCE_DIR}
            ${torch_api_include} -I${shim} -I${DIFFTRAIN_NCCL_HEADER_DIR}
            ${CMAKE_SOURCE_DIR}/trainer/nccl_communicator.cpp)
  set_tests_properties(nccl_backend_compiles PROPERTIES TIMEOUT 180)
endif()
