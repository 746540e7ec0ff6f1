// The last step of sampling a latent diffusion model (data.latents, docs/LATENTS.md): the
// sampled z, in the space the model diffused, back to images with the TorchScript VAE decoder:
// images = decoder(z / latent_scale + latent_shift). FID, colour and class checks and the PNGs
// then see pixels, as for a pixel model.
#pragma once

#include <memory>
#include <string>

#include "model/frozen_vae.h"
#include "trainer/config.h"

namespace difftrain::eval {

struct LatentDecoder {
  std::shared_ptr<const model::FrozenVae> vae;  // decoder: (B, c, h, w) latents -> (B, C, H, W) images
  double scale = 1.0, shift = 0.0;             // the training run's data.latent_scale / latent_shift

  // z: (B, c, h, w) float -> (B, C, H, W) float32 in about [-1, 1] (not clamped).
  torch::Tensor decode(const torch::Tensor& z) const;
};

// Loads `path` as the decoder of a model trained with `config` (data.latents must be true) and
// checks that it takes the model's (data.latent_channels, latent_size, latent_size) and returns
// (data.channels, image_size, image_size) images. Throws std::runtime_error naming the file, the
// shapes it has and those the checkpoint's config expects. Warns (stderr) when the file carries a
// latent_scale other than the one the model was trained with (it may have been encoded with
// `encode-images --latent-scale`; the model's own is used).
LatentDecoder load_latent_decoder(const std::string& path, const Config& config);

}  // namespace difftrain::eval
