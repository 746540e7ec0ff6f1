# eval/ image output: PNG I/O, grids, manifests, colour match. No LibTorch.
add_executable(test_eval_io ${CMAKE_CURRENT_LIST_DIR}/test_image_io.cpp
                            ${CMAKE_CURRENT_LIST_DIR}/test_colour_match.cpp
                            ${CMAKE_CURRENT_LIST_DIR}/test_plot.cpp
                            ${CMAKE_CURRENT_LIST_DIR}/test_fid_curves.cpp)
target_link_libraries(test_eval_io PRIVATE difftrain_eval_io GTest::gtest_main)
gtest_discover_tests(test_eval_io)

# What the evaluation commands accept: option bounds, TorchScript denoiser checks, colour-match
# on empty manifests, caption/prompt validation, sweep points keyed by their inputs.
difftrain_python_tests(eval_input eval_input_tests.py 600 SampleOptions TorchScriptChecks ColourMatchInput Captions SweepKeys)

# Option bounds, prompt/caption validation and the SHA-256 of sweep keys (library level).
add_executable(test_eval_inputs ${CMAKE_CURRENT_LIST_DIR}/test_eval_inputs.cpp)
difftrain_use_torch_pch(test_eval_inputs)
target_link_libraries(test_eval_inputs PRIVATE difftrain_eval difftrain_data GTest::gtest_main)
gtest_discover_tests(test_eval_inputs DISCOVERY_TIMEOUT 60)
