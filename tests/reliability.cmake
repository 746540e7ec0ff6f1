# Run-level guarantees of docs/RELIABILITY.md: one job per run directory, the non-finite guard.
foreach(case RunLock NonfiniteGuard)
  add_test(NAME reliability.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/reliability_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(reliability.${case} PROPERTIES TIMEOUT 600)
endforeach()
set_tests_properties(reliability.NonfiniteGuard PROPERTIES PROCESSORS 2)

add_executable(test_run_guards ${CMAKE_CURRENT_LIST_DIR}/test_run_guards.cpp)
target_link_libraries(test_run_guards PRIVATE difftrain_trainer GTest::gtest_main)
gtest_discover_tests(test_run_guards)
