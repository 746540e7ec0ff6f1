# Tests of `difftrain encode-text` (model/frozen_text_encoder.h, cli/encode_text_command.h)
# against Debian's python3-torch running the same TorchScript encoder, and spm_encode.
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
foreach(case Encode Ranks Resume BadInput)
  add_test(NAME encode_text.${case}
    COMMAND ${DIFFTRAIN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/encode_text_tests.py $<TARGET_FILE:difftrain> ${case})
  set_tests_properties(encode_text.${case} PROPERTIES TIMEOUT 300)
endforeach()
set_tests_properties(encode_text.Ranks PROPERTIES PROCESSORS 2)
