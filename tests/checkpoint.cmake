# Verified checkpoints end to end (docs/CHECKPOINTS.md): fallback to the newest checkpoint
# that verifies, state.json validation, checkpoint-info, sample/export refusal, full disks
# (tmpfs mounts: root) and resume when only rank 0 can read the checkpoints (unshare: root).
foreach(case Fallback StateValidation Inspect SampleAndExport DiskFull NodeLocal)
  add_test(NAME checkpoint.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/checkpoint_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(checkpoint.${case} PROPERTIES TIMEOUT 600)
endforeach()
set_tests_properties(checkpoint.DiskFull checkpoint.NodeLocal PROPERTIES PROCESSORS 2)
