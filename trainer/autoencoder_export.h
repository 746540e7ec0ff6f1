// What `difftrain autoencoder export` and `difftrain autoencoder eval` do with a
// checkpoint of `difftrain autoencoder train` (docs/LATENTS.md).
//
// Export writes two TorchScript files from the EMA weights (model/torchscript_export.h),
// the contract `difftrain encode-images --vae-encoder` and `--vae-decoder` read (users'
// own VAEs, e.g. diffusers' AutoencoderKL, are wrapped to the same contract):
//   ENCODER forward(images float32 (B, C, H, W) in [-1, 1]) -> latents float32 (B, c, H/f, W/f):
//           the posterior mean, unscaled
//   DECODER forward(latents float32 (B, c, h, w), unscaled) -> images float32 (B, C, h*f, w*f)
//           in about [-1, 1], not clamped
// Both carry the float attributes latent_scale and latent_shift (a diffusion model is trained on
// (z - latent_shift) * latent_scale) and the int attributes latent_channels, downsample_factor
// and image_channels. latent_scale = 1 / std of the encoder's latents over N training images
// (Rombach et al. 2022, sec. 4.3.2 and appendix G: how Stable Diffusion's 0.18215 was set),
// latent_shift = 0. Batch size and image size are free in the traced files.
#pragma once

#include <cstdint>
#include <string>

#include "model/autoencoder.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace difftrain {

struct LoadedAutoencoder {
  std::string dir;  // the verified checkpoint directory
  Config config;    // its config.yaml
  TrainingState state;
  model::AutoencoderKL net{nullptr};  // EMA weights, eval mode, CPU
};

// `path`: a checkpoint directory or a run directory (its newest checkpoint that verifies).
// CheckpointError when there is none, it does not verify, or it is not an autoencoder's.
LoadedAutoencoder load_autoencoder(const std::string& path);

struct AutoencoderExportOptions {
  std::string checkpoint;        // checkpoint or run directory
  std::string encoder_path, decoder_path;
  int64_t scale_samples = 1000;  // N images for latent_scale
  std::string scale_data;        // shards for latent_scale; empty: the checkpoint's data.dir
  int64_t batch_size = 64;
};

struct AutoencoderExportResult {
  std::string checkpoint;
  double latent_scale = 0, latent_shift = 0;
  double latent_mean = 0, latent_std = 0;  // of the N images' latents (every element)
  int64_t scale_images = 0;                // N actually used (fewer when the shards hold fewer)
  int64_t latent_channels = 0, downsample_factor = 0, image_channels = 0, image_size = 0;
};

AutoencoderExportResult export_autoencoder(const AutoencoderExportOptions& options);

struct ReconstructionReport {
  std::string checkpoint;
  int64_t images = 0;
  double psnr_db = 0;            // mean over images of each image's PSNR on [0, 1]
  double seconds = 0;            // encode + decode time, reading excluded
  double images_per_second = 0;
};

// decode(posterior mean) of the first `limit` images (0: all) of `data_dir`, in file order,
// against the images: what the exported encoder and decoder give.
ReconstructionReport evaluate_autoencoder(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
                                          int64_t batch_size);

}  // namespace difftrain
