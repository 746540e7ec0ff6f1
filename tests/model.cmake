# The UNet at published scale: configs/sd15.yaml (Stable Diffusion 1.5's shape, 860 M parameters)
# in C++ and through `difftrain model-info`. The SD-sized tests hold 3.4 GB of weights (7 GB with
# gradients, more while exporting), so they run alone. Included from tests/CMakeLists.txt.
add_executable(test_model_scale ${CMAKE_CURRENT_LIST_DIR}/test_model_scale.cpp)
difftrain_use_torch_pch(test_model_scale)
target_link_libraries(test_model_scale PRIVATE difftrain_trainer GTest::gtest_main)
target_compile_definitions(test_model_scale PRIVATE DIFFTRAIN_CONFIGS_DIR="${CMAKE_CURRENT_LIST_DIR}/../configs")
gtest_discover_tests(test_model_scale DISCOVERY_TIMEOUT 60 PROPERTIES RUN_SERIAL TRUE TIMEOUT 900)

difftrain_python_tests(model_scale model_scale_tests.py 900 Count ForwardBackwardExport BadInput)
set_tests_properties(model_scale.Count model_scale.ForwardBackwardExport PROPERTIES RUN_SERIAL TRUE)
