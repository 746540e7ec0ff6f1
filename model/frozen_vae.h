// FrozenVae: a VAE encoder or decoder trained elsewhere (diffusers' AutoencoderKL
// through model/export_vae.py, or `difftrain autoencoder export`), loaded from a
// TorchScript file and only ever run forward (docs/LATENTS.md).
//
// The files' contract. Encoder: forward(images float32 (B, C, H, W) in [-1, 1])
// -> latents float32 (B, c, h, w), the posterior mean, unscaled. Decoder:
// forward(latents float32 (B, c, h, w), unscaled) -> images float32 (B, C, H, W)
// in [-1, 1] (callers clamp). Optional float attributes latent_scale and
// latent_shift: a latent model diffuses z = (latents - latent_shift) * latent_scale.
// Everything is checked when the file is loaded, on a probe batch.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace difftrain::model {

class FrozenVae {
 public:
  // role names the file in messages ("VAE encoder", "VAE decoder"); input_shape is one
  // sample's (C, H, W) it is probed with. Throws std::runtime_error "<role> <path>: ..."
  // for a missing file, a file that is not TorchScript, a forward that does not take one
  // tensor, bad latent_scale / latent_shift attributes, and probe outputs that are not one
  // finite floating-point (B, c, h, w) tensor.
  FrozenVae(const std::string& path, const std::string& role, std::vector<int64_t> input_shape);

  // (B, ...input_shape) float -> (B, ...output_shape) float32, without gradients. Throws
  // std::runtime_error when the output stops matching the probe's shape or is not finite.
  torch::Tensor run(const torch::Tensor& input) const;

  const std::vector<int64_t>& input_shape() const { return input_shape_; }
  const std::vector<int64_t>& output_shape() const { return output_shape_; }
  // The file's latent_scale / latent_shift attributes, when it has them.
  const std::optional<double>& latent_scale() const { return latent_scale_; }
  const std::optional<double>& latent_shift() const { return latent_shift_; }
  const std::string& sha256() const { return sha256_; }
  // "<file name> sha256:<hex>": the shards' `latent_encoder` attribute.
  const std::string& identity() const { return identity_; }

 private:
  std::string path_, role_, sha256_, identity_;
  mutable torch::jit::Module module_;  // forward is not const in TorchScript's API
  std::vector<int64_t> input_shape_, output_shape_;
  std::optional<double> latent_scale_, latent_shift_;
};

}  // namespace difftrain::model
