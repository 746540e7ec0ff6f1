#include "eval/latent_decoder.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <stdexcept>

namespace difftrain::eval {
namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

}  // namespace

torch::Tensor LatentDecoder::decode(const torch::Tensor& z) const { return vae->run(z / scale + shift); }

LatentDecoder load_latent_decoder(const std::string& path, const Config& config) {
  if (!config.data.latents) {
    throw std::runtime_error("--vae-decoder " + path + ": this model diffuses images (data.latents=false), not latents");
  }
  const std::vector<int64_t> latent = {config.data.latent_channels, config.data.latent_size, config.data.latent_size};
  const std::vector<int64_t> image = {config.data.channels, config.data.image_size, config.data.image_size};
  LatentDecoder decoder;
  decoder.vae = std::make_shared<const model::FrozenVae>(path, "VAE decoder", latent);
  if (decoder.vae->output_shape() != image) {
    throw std::runtime_error("VAE decoder " + path + ": turns latents " + shape_text(latent) + " into " +
                             shape_text(decoder.vae->output_shape()) + ", but the model was trained on images " +
                             shape_text(image) + " (data.channels, image_size, image_size)");
  }
  decoder.scale = config.data.latent_scale;
  decoder.shift = config.data.latent_shift;
  if (!(decoder.scale > 0) || !std::isfinite(decoder.scale)) {
    throw std::runtime_error("VAE decoder " + path + ": the checkpoint's data.latent_scale is " +
                             std::to_string(decoder.scale) + "; expected the resolved scale > 0 of a latent run");
  }
  const auto& file_scale = decoder.vae->latent_scale();
  if (file_scale && std::fabs(*file_scale - decoder.scale) > 1e-6 * decoder.scale) {
    spdlog::warn("VAE decoder {} carries latent_scale {}, the model was trained with data.latent_scale {}: "
                 "decoding with the model's", path, *file_scale, decoder.scale);
  }
  if (!config.data.latent_encoder.empty())
    spdlog::info("decoding latents of {} with {}", config.data.latent_encoder, decoder.vae->identity());
  return decoder;
}

}  // namespace difftrain::eval
