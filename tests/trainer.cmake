# Unit tests of config, model, diffusion and trainer pieces, and the 2-rank MPI test.
set(DIFFTRAIN_MPIRUN ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe)

add_executable(test_core
  ${CMAKE_CURRENT_LIST_DIR}/test_config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_model.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_batched_matmul.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_onednn_conv.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_group_norm_silu.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_fused_attention.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_layer_norm.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_fused_adamw.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_caching_cpu_allocator.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_activation_checkpoint.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_diffusion.cpp
  ${CMAKE_CURRENT_LIST_DIR}/test_power_ema.cpp)
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
            ${CMAKE_SOURCE_DIR}/distributed/nccl_communicator.cpp)
  set_tests_properties(nccl_backend_compiles PROPERTIES TIMEOUT 180)
endif()

# Failure never hangs: a 3-rank drill where one rank hangs, throws or is killed.
add_executable(mpi_failure_drill ${CMAKE_CURRENT_LIST_DIR}/mpi_failure_drill.cpp)
difftrain_use_torch_pch(mpi_failure_drill)
target_link_libraries(mpi_failure_drill PRIVATE difftrain_trainer)
foreach(case test_a_hung_rank_is_named_by_rank0 test_a_rank0_whose_training_thread_hangs_is_reported_by_the_others
             test_an_exception_in_one_rank_ends_every_rank test_a_killed_rank_ends_the_job)
  add_test(NAME failures.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/failure_tests.py $<TARGET_FILE:mpi_failure_drill>
            Failures.${case})
  set_tests_properties(failures.${case} PROPERTIES TIMEOUT 180 PROCESSORS 2)
endforeach()
