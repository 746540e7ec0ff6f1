# Configuration validation and resume with a changed configuration, end to end
# (the unit tests are in test_config.cpp, part of test_core).
difftrain_python_tests(config config_tests.py 600 ConfigErrors ResumeChanges)
