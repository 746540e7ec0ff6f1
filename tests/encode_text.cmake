# Tests of `difftrain encode-text` (model/frozen_text_encoder.h, cli/encode_text_command.h)
# against Debian's python3-torch running the same TorchScript encoder, and spm_encode.
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
difftrain_python_tests(encode_text encode_text_tests.py 300 Encode Ranks Resume BadInput)
set_tests_properties(encode_text.Ranks PROPERTIES PROCESSORS 2)
