#include "model/autoencoder.h"

#include <torch/torch.h>

#include <stdexcept>

#include "model/norm_fp32.h"

namespace difftrain::model {
namespace {

torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1));
}

void check_options(const AutoencoderOptions& o) {
  TORCH_CHECK(o.image_channels >= 1 && o.base_channels >= 1 && o.latent_channels >= 1 && o.norm_groups >= 1 &&
                  o.num_res_blocks >= 1 && !o.channel_mults.empty(),
              "autoencoder options: channels, groups, blocks and levels must be positive");
  for (int64_t mult : o.channel_mults)
    TORCH_CHECK(mult >= 1 && (o.base_channels * mult) % o.norm_groups == 0,
                "autoencoder options: every level's channels must be positive and divisible by norm_groups");
  TORCH_CHECK(o.base_channels % o.norm_groups == 0, "autoencoder options: base_channels % norm_groups != 0");
}

}  // namespace

int64_t downsample_factor(const AutoencoderOptions& options) {
  return int64_t{1} << (static_cast<int64_t>(options.channel_mults.size()) - 1);
}

torch::Tensor Posterior::sample(const torch::Tensor& noise) const {
  return mean + torch::exp(0.5 * logvar) * noise;
}

torch::Tensor kl_to_standard_normal(const torch::Tensor& mean, const torch::Tensor& logvar) {
  const auto m = mean.to(torch::kFloat32), v = logvar.to(torch::kFloat32);
  return 0.5 * (m.pow(2) + v.exp() - 1.0 - v).flatten(1).sum(1);
}

AutoencoderResBlockImpl::AutoencoderResBlockImpl(int64_t in, int64_t out, int64_t groups) {
  norm1 = register_module("norm1", torch::nn::GroupNorm(groups, in));
  conv1 = register_module("conv1", conv3x3(in, out));
  norm2 = register_module("norm2", torch::nn::GroupNorm(groups, out));
  conv2 = register_module("conv2", conv3x3(out, out));
  if (in != out) skip = register_module("skip", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1)));
}

torch::Tensor AutoencoderResBlockImpl::forward(const torch::Tensor& x) {
  auto h = conv1(torch::silu(norm_fp32(norm1, x)));
  h = conv2(torch::silu(norm_fp32(norm2, h)));
  return (skip ? skip(x) : x) + h;
}

ImageEncoderImpl::ImageEncoderImpl(const AutoencoderOptions& o) : options(o) {
  check_options(o);
  const int64_t C = o.base_channels, G = o.norm_groups;
  conv_in = register_module("conv_in", conv3x3(o.image_channels, C));
  blocks = register_module("blocks", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  int64_t channels = C;
  const size_t levels = o.channel_mults.size();
  for (size_t level = 0; level < levels; ++level) {
    const int64_t out = C * o.channel_mults[level];
    for (int64_t i = 0; i < o.num_res_blocks; ++i) {
      blocks->push_back(AutoencoderResBlock(channels, out, G));
      channels = out;
    }
    if (level + 1 < levels) downsamplers->push_back(conv3x3(channels, channels, 2));
  }
  middle = register_module("middle", AutoencoderResBlock(channels, channels, G));
  norm_out = register_module("norm_out", torch::nn::GroupNorm(G, channels));
  conv_out = register_module("conv_out", conv3x3(channels, 2 * o.latent_channels));
}

torch::Tensor ImageEncoderImpl::forward(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == options.image_channels, "autoencoder encoder expects images (B, ",
              options.image_channels, ", H, W), got ", images.sizes());
  const int64_t f = downsample_factor(options);
  TORCH_CHECK(images.size(2) % f == 0 && images.size(3) % f == 0, "autoencoder encoder: image side ", images.size(2),
              "x", images.size(3), " is not divisible by the downsampling factor ", f);
  auto h = conv_in(images);
  const size_t levels = options.channel_mults.size();
  size_t block = 0;
  for (size_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < options.num_res_blocks; ++i) h = blocks[block++]->as<AutoencoderResBlockImpl>()->forward(h);
    if (level + 1 < levels) h = downsamplers[level]->as<torch::nn::Conv2dImpl>()->forward(h);
  }
  h = middle(h);
  return conv_out(torch::silu(norm_fp32(norm_out, h)));
}

ImageDecoderImpl::ImageDecoderImpl(const AutoencoderOptions& o) : options(o) {
  check_options(o);
  const int64_t C = o.base_channels, G = o.norm_groups;
  const size_t levels = o.channel_mults.size();
  int64_t channels = C * o.channel_mults.back();
  conv_in = register_module("conv_in", conv3x3(o.latent_channels, channels));
  middle = register_module("middle", AutoencoderResBlock(channels, channels, G));
  blocks = register_module("blocks", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  for (size_t level = levels; level-- > 0;) {
    const int64_t out = C * o.channel_mults[level];
    for (int64_t i = 0; i <= o.num_res_blocks; ++i) {
      blocks->push_back(AutoencoderResBlock(channels, out, G));
      channels = out;
    }
    if (level > 0) upsamplers->push_back(conv3x3(channels, channels));
  }
  norm_out = register_module("norm_out", torch::nn::GroupNorm(G, channels));
  conv_out = register_module("conv_out", conv3x3(channels, o.image_channels));
}

torch::Tensor ImageDecoderImpl::forward(const torch::Tensor& latents) {
  TORCH_CHECK(latents.dim() == 4 && latents.size(1) == options.latent_channels,
              "autoencoder decoder expects latents (B, ", options.latent_channels, ", h, w), got ", latents.sizes());
  auto h = middle(conv_in(latents));
  const size_t levels = options.channel_mults.size();
  size_t block = 0, up = 0;
  for (size_t level = levels; level-- > 0;) {
    for (int64_t i = 0; i <= options.num_res_blocks; ++i) h = blocks[block++]->as<AutoencoderResBlockImpl>()->forward(h);
    if (level > 0) {
      // Scale factors rather than an output size, so a traced decoder (export) takes any latent size.
      const std::vector<double> twice{2.0, 2.0};
      h = at::upsample_nearest2d(h, c10::nullopt, c10::ArrayRef<double>(twice));
      h = upsamplers[up++]->as<torch::nn::Conv2dImpl>()->forward(h);
    }
  }
  return conv_out(torch::silu(norm_fp32(norm_out, h)));
}

AutoencoderKLImpl::AutoencoderKLImpl(AutoencoderOptions o) : options(std::move(o)) {
  encoder = register_module("encoder", ImageEncoder(options));
  decoder = register_module("decoder", ImageDecoder(options));
}

Posterior AutoencoderKLImpl::encode(const torch::Tensor& images) {
  const auto moments = encoder(images).chunk(2, 1);
  return {moments[0], torch::clamp(moments[1], kMinLogVariance, kMaxLogVariance)};
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& latents) { return decoder(latents); }

ReconstructionLoss parse_reconstruction_loss(const std::string& name) {
  if (name == "l1") return ReconstructionLoss::kL1;
  if (name == "l2") return ReconstructionLoss::kL2;
  throw std::invalid_argument("reconstruction loss '" + name + "': expected l1 or l2");
}

AutoencoderLoss autoencoder_loss(const torch::Tensor& images, const torch::Tensor& reconstruction,
                                 const Posterior& posterior, double kl_weight, ReconstructionLoss kind) {
  const auto x = images.to(torch::kFloat32), y = reconstruction.to(torch::kFloat32);
  AutoencoderLoss loss;
  loss.reconstruction = kind == ReconstructionLoss::kL1 ? (x - y).abs().mean() : (x - y).pow(2).mean();
  loss.kl = kl_to_standard_normal(posterior.mean, posterior.logvar).mean();
  loss.total = loss.reconstruction + kl_weight * loss.kl;
  return loss;
}

torch::Tensor psnr_db(const torch::Tensor& images, const torch::Tensor& reconstruction) {
  // [-1, 1] -> [0, 1] halves the error: MSE on [0, 1] is a quarter of the MSE on [-1, 1].
  const auto x = images.to(torch::kFloat64), y = reconstruction.to(torch::kFloat64).clamp(-1, 1);
  const auto mse = ((x - y) / 2).pow(2).flatten(1).mean(1);
  return -10.0 * torch::log10(mse.clamp_min(1e-20));
}

}  // namespace difftrain::model
