# FID: Fréchet distance, feature statistics, stats files, TorchScript extractors.
add_executable(test_fid ${CMAKE_CURRENT_LIST_DIR}/test_fid.cpp)
difftrain_use_torch_pch(test_fid)
target_link_libraries(test_fid PRIVATE difftrain_eval GTest::gtest_main)
gtest_discover_tests(test_fid TEST_PREFIX "fid." DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)

# Cross-checks with Python: the distance against scipy.linalg.sqrtm the
# pytorch-fid way, and eval/export_inception.py's output read by FeatureExtractor.
add_executable(fid_tool_for_tests ${CMAKE_CURRENT_LIST_DIR}/fid_tool_for_tests.cpp)
difftrain_use_torch_pch(fid_tool_for_tests)
target_link_libraries(fid_tool_for_tests PRIVATE difftrain_eval)
add_test(NAME fid.scipy_cross_check
  COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_fid_scipy.py scipy $<TARGET_FILE:fid_tool_for_tests>)
set_tests_properties(fid.scipy_cross_check PROPERTIES TIMEOUT 120)
# Exit code 77: python3-torchvision is not installed (launch/install_deps.sh --tests).
add_test(NAME fid.export_inception
  COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_fid_scipy.py export $<TARGET_FILE:fid_tool_for_tests>
          ${CMAKE_SOURCE_DIR}/eval/export_inception.py)
set_tests_properties(fid.export_inception PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
