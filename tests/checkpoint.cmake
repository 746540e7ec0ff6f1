# Verified checkpoints end to end (docs/CHECKPOINTS.md): fallback to the newest checkpoint
# that verifies, state.json validation, checkpoint-info, sample/export refusal, full disks
# (tmpfs mounts: root) and resume when only rank 0 can read the checkpoints (unshare: root).
difftrain_python_tests(checkpoint checkpoint_tests.py 600 Fallback StateValidation Inspect SampleAndExport DiskFull NodeLocal)
set_tests_properties(checkpoint.DiskFull checkpoint.NodeLocal PROPERTIES PROCESSORS 2)
