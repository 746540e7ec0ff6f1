# Tests of the Hugging Face export scripts (model/export_text_encoder.py, model/encode_text_hf.py,
# model/export_vae.py) with random-weight stand-ins of the HF classes (no transformers/diffusers):
# exported files against the stand-ins, then encode-text and train on what they produce.
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
difftrain_python_tests(export_scripts export_scripts_tests.py 300 TextEncoderExport EncodeTextHF VaeExport)
