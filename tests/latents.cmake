# Latent diffusion (docs/LATENTS.md): `difftrain encode-images` with a tiny random TorchScript VAE
# built by the test, checked against python3-torch and h5py; training on latents (data.latents=true).
# Included from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this folder.
difftrain_python_tests(latents latents_tests.py 600 Encode Ranks Resume Train Sample BadInput)
set_tests_properties(latents.Ranks latents.Train PROPERTIES PROCESSORS 2)
