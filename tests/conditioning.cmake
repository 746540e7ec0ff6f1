# Training on precomputed text embeddings (model.conditioning=precomputed, docs/CONDITIONING.md):
# shards encoded by `difftrain encode-text` with a tiny random TorchScript encoder; sampling, export,
# sweeps and training-time evaluation of such models.
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
difftrain_python_tests(conditioning conditioning_tests.py 600 Train Resume Ranks BadInput
  Sampling SamplingErrors Export Sweep TrainingHooks)
set_tests_properties(conditioning.Ranks PROPERTIES PROCESSORS 2)
