# Training on precomputed text embeddings (model.conditioning=precomputed, docs/CONDITIONING.md):
# shards encoded by `difftrain encode-text` with a tiny random TorchScript encoder.
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
foreach(case Train Resume Ranks BadInput)
  add_test(NAME conditioning.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/conditioning_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(conditioning.${case} PROPERTIES TIMEOUT 600)
endforeach()
set_tests_properties(conditioning.Ranks PROPERTIES PROCESSORS 2)
