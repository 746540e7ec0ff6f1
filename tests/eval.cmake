# eval/ image output: PNG I/O, grids, manifests, colour match. No LibTorch.
add_executable(test_eval_io ${CMAKE_CURRENT_LIST_DIR}/test_image_io.cpp
                            ${CMAKE_CURRENT_LIST_DIR}/test_colour_match.cpp
                            ${CMAKE_CURRENT_LIST_DIR}/test_plot.cpp)
target_link_libraries(test_eval_io PRIVATE difftrain_eval_io GTest::gtest_main)
gtest_discover_tests(test_eval_io)
