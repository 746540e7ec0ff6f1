# diffusion/ samplers against closed forms (Gaussian data: exact eps-predictor and ODE map).
add_executable(test_samplers ${CMAKE_CURRENT_LIST_DIR}/test_samplers.cpp)
difftrain_use_torch_pch(test_samplers)
target_link_libraries(test_samplers PRIVATE difftrain_diffusion GTest::gtest_main)
gtest_discover_tests(test_samplers DISCOVERY_TIMEOUT 60)
