# Tests of data/ (shards, loader, synthetic dataset). Included from
# tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
add_executable(test_data
  ${CMAKE_CURRENT_LIST_DIR}/test_shards.cpp     # format round trip and every ShardError
  ${CMAKE_CURRENT_LIST_DIR}/test_loader.cpp     # rank shares, epochs, resume, reader errors
  ${CMAKE_CURRENT_LIST_DIR}/test_synthetic.cpp  # rendered shapes and synthetic shards
  ${CMAKE_CURRENT_LIST_DIR}/test_captions.cpp   # captions of a shard set, seeded order, lengths
  ${CMAKE_CURRENT_LIST_DIR}/test_text_embeddings.cpp  # text embeddings: write, validate, read, loader rows
)
# The tests write malformed shards with the HDF5 C++ API directly.
target_include_directories(test_data PRIVATE ${HDF5_INCLUDE_DIRS})
target_link_libraries(test_data PRIVATE difftrain_data ${HDF5_CXX_LIBRARIES} GTest::gtest_main)
gtest_discover_tests(test_data TEST_PREFIX "data." PROPERTIES TIMEOUT 120)

# Cross-check with h5py: shards from ShardWriter read by h5py, and shards from
# h5py read by ShardReader (through this helper).
add_executable(shard_tool_for_tests ${CMAKE_CURRENT_LIST_DIR}/shard_tool_for_tests.cpp)
target_link_libraries(shard_tool_for_tests PRIVATE difftrain_data)
if(NOT DIFFTRAIN_PYTHON)
  set(DIFFTRAIN_PYTHON /usr/bin/python3)
endif()
add_test(NAME data.shard_h5py_cross_check
  COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_shard_h5py.py
          $<TARGET_FILE:shard_tool_for_tests>)
set_tests_properties(data.shard_h5py_cross_check PROPERTIES TIMEOUT 120)
