# End-to-end tests of the difftrain binary (Python driver; Debian's python3-h5py).
foreach(case BadInput TwoRanks DataParallel FailureHandling Precision ActivationCheckpointing Export Evaluation Preemption Resume)
  add_test(NAME cli.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/cli_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(cli.${case} PROPERTIES TIMEOUT 600)
endforeach()
set_tests_properties(cli.TwoRanks cli.DataParallel cli.FailureHandling cli.Evaluation cli.Preemption PROPERTIES PROCESSORS 2)

# Training and evaluation on a user's own data (grey shards, safe defaults, flips, prompts).
foreach(case SafeDefaults GreyData RandomFlip)
  add_test(NAME own_data.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/own_data_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(own_data.${case} PROPERTIES TIMEOUT 600)
endforeach()
set_tests_properties(own_data.RandomFlip PROPERTIES PROCESSORS 2)
