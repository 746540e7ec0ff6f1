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

# Domain feature extractor + classifier (features --data) and class-match:
# training on labelled shard sets, the module's contract, known-answer class match.
add_executable(test_domain_features ${CMAKE_CURRENT_LIST_DIR}/test_domain_features.cpp)
difftrain_use_torch_pch(test_domain_features)
target_link_libraries(test_domain_features PRIVATE difftrain_eval difftrain_data nlohmann_json::nlohmann_json GTest::gtest_main)
gtest_discover_tests(test_domain_features TEST_PREFIX "domain." DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
# The exported module in Python (torch.jit.load) against the C++ side, and the CLI.
add_executable(domain_tool_for_tests ${CMAKE_CURRENT_LIST_DIR}/domain_tool_for_tests.cpp)
difftrain_use_torch_pch(domain_tool_for_tests)
target_link_libraries(domain_tool_for_tests PRIVATE difftrain_eval)
add_test(NAME domain.python_cross_check
  COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_domain_features.py $<TARGET_FILE:difftrain>
          $<TARGET_FILE:domain_tool_for_tests>)
set_tests_properties(domain.python_cross_check PROPERTIES TIMEOUT 600)
