# Fuzz: a few hundred mutated configs, shards, manifests, TorchScript files and command lines;
# each must end in success or a clean error (tests/fuzz_tests.py).
foreach(case Configs Shards Manifests TorchScript Arguments)
  add_test(NAME fuzz.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/fuzz_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(fuzz.${case} PROPERTIES TIMEOUT 900)
endforeach()
