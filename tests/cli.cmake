# End-to-end tests of the difftrain binary (Python driver; Debian's python3-h5py).
difftrain_python_tests(cli cli_tests.py 600 BadInput TwoRanks DataParallel FailureHandling Precision ActivationCheckpointing Export Evaluation Preemption Resume TrainingObjectives PostHocEma ZeroTerminalSnr RectifiedFlow)
set_tests_properties(cli.TwoRanks cli.DataParallel cli.FailureHandling cli.Evaluation cli.Preemption PROPERTIES PROCESSORS 2)

# Training and evaluation on a user's own data (grey shards, safe defaults, flips, prompts).
difftrain_python_tests(own_data own_data_tests.py 600 SafeDefaults GreyData RandomFlip)
set_tests_properties(own_data.RandomFlip PROPERTIES PROCESSORS 2)
