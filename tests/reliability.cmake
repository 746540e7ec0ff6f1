# Run-level guarantees of docs/RELIABILITY.md: one job per run directory, the non-finite guard.
difftrain_python_tests(reliability reliability_tests.py 600 RunLock NonfiniteGuard)
set_tests_properties(reliability.NonfiniteGuard PROPERTIES PROCESSORS 2)

add_executable(test_run_guards ${CMAKE_CURRENT_LIST_DIR}/test_run_guards.cpp)
target_link_libraries(test_run_guards PRIVATE difftrain_trainer GTest::gtest_main)
gtest_discover_tests(test_run_guards)
