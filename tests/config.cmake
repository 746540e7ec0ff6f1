# Configuration validation and resume with a changed configuration, end to end
# (the unit tests are in test_config.cpp, part of test_core).
foreach(case ConfigErrors ResumeChanges)
  add_test(NAME config.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/config_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(config.${case} PROPERTIES TIMEOUT 600)
endforeach()
