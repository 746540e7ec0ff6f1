# Fuzz: a few hundred mutated configs, shards, manifests, TorchScript files and command lines;
# each must end in success or a clean error (tests/fuzz_tests.py).
difftrain_python_tests(fuzz fuzz_tests.py 900 Configs Shards Manifests TorchScript Arguments)
