// KL-regularised convolutional autoencoder, the first stage of a latent
// diffusion model (Rombach et al. 2022, "High-Resolution Image Synthesis with
// Latent Diffusion Models", sec. 3 and appendix G; the reference code is
// CompVis/latent-diffusion ldm/modules/diffusionmodules/model.py, Encoder/Decoder).
//
//   encoder: conv_in -> per level num_res_blocks residual blocks (GroupNorm, SiLU,
//            conv; no time embedding) and, after every level but the last, a
//            stride-2 conv -> middle residual block -> GroupNorm, SiLU, conv to
//            2 * latent_channels: the posterior's mean and log-variance
//   decoder: conv_in -> middle residual block -> per level (deepest first)
//            num_res_blocks + 1 residual blocks (as LDM's decoder) and, before
//            every level but the first, nearest x2 upsampling + conv ->
//            GroupNorm, SiLU, conv to image_channels
// Downsampling factor f = 2^(levels - 1): 32x32 images with channel_mults
// {1, 2, 2} become (latent_channels, 8, 8) latents. No attention blocks (LDM's
// middle attention matters at 256 px, not at these sizes), no GAN or perceptual
// loss (no pretrained perceptual network exists here): the loss is
// reconstruction + kl_weight * KL(q(z|x) || N(0, I)) (Kingma & Welling 2014).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::model {

struct AutoencoderOptions {
  int64_t image_channels = 3;
  int64_t base_channels = 32;
  std::vector<int64_t> channel_mults = {1, 2, 2};  // one per level; f = 2^(levels - 1)
  int64_t num_res_blocks = 1;                      // per encoder level (decoder: one more)
  int64_t latent_channels = 4;                     // c of the (c, H/f, W/f) latents
  int64_t norm_groups = 8;
};

// 2^(levels - 1).
int64_t downsample_factor(const AutoencoderOptions& options);

// Bounds of the posterior's log-variance (LDM's DiagonalGaussianDistribution).
constexpr double kMinLogVariance = -30.0, kMaxLogVariance = 20.0;

// The diagonal Gaussian posterior q(z|x).
struct Posterior {
  torch::Tensor mean;     // (B, c, h, w)
  torch::Tensor logvar;   // (B, c, h, w), clamped to [kMinLogVariance, kMaxLogVariance]
  // mean + exp(logvar / 2) * noise; noise (B, c, h, w) standard normal.
  torch::Tensor sample(const torch::Tensor& noise) const;
};

// KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar),
// summed over each image's latent elements: (B, ...) -> (B), float32.
torch::Tensor kl_to_standard_normal(const torch::Tensor& mean, const torch::Tensor& logvar);

// Residual block without time embedding: x + conv(SiLU(GN(conv(SiLU(GN(x)))))).
struct AutoencoderResBlockImpl : torch::nn::Module {
  AutoencoderResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);  // (B, Cin, H, W) -> (B, Cout, H, W)
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, skip{nullptr};  // skip: 1x1, only when Cin != Cout
};
TORCH_MODULE(AutoencoderResBlock);

struct ImageEncoderImpl : torch::nn::Module {
  explicit ImageEncoderImpl(const AutoencoderOptions& options);
  // (B, C, H, W) in [-1, 1] -> (B, 2c, H/f, W/f): mean and log-variance, unclamped.
  torch::Tensor forward(const torch::Tensor& images);
  AutoencoderOptions options;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList blocks, downsamplers;  // blocks: levels * num_res_blocks
  AutoencoderResBlock middle{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
};
TORCH_MODULE(ImageEncoder);

struct ImageDecoderImpl : torch::nn::Module {
  explicit ImageDecoderImpl(const AutoencoderOptions& options);
  // (B, c, h, w) -> (B, C, h*f, w*f), images in about [-1, 1] (not clamped).
  torch::Tensor forward(const torch::Tensor& latents);
  AutoencoderOptions options;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  AutoencoderResBlock middle{nullptr};
  torch::nn::ModuleList blocks, upsamplers;  // blocks: levels * (num_res_blocks + 1), deepest level first
  torch::nn::GroupNorm norm_out{nullptr};
};
TORCH_MODULE(ImageDecoder);

struct AutoencoderKLImpl : torch::nn::Module {
  explicit AutoencoderKLImpl(AutoencoderOptions options);
  Posterior encode(const torch::Tensor& images);          // images (B, C, H, W) in [-1, 1]
  torch::Tensor decode(const torch::Tensor& latents);     // (B, c, h, w) -> (B, C, H, W)
  AutoencoderOptions options;
  ImageEncoder encoder{nullptr};
  ImageDecoder decoder{nullptr};
};
TORCH_MODULE(AutoencoderKL);

enum class ReconstructionLoss { kL1, kL2 };
ReconstructionLoss parse_reconstruction_loss(const std::string& name);  // "l1" | "l2"

struct AutoencoderLoss {
  torch::Tensor total;           // () reconstruction + kl_weight * kl
  torch::Tensor reconstruction;  // () mean over every image element of |x - x^| or (x - x^)^2
  torch::Tensor kl;              // () KL summed over each image's latent elements, mean over images
};

// The training loss of one batch. images, reconstruction: (B, C, H, W); float32 results.
AutoencoderLoss autoencoder_loss(const torch::Tensor& images, const torch::Tensor& reconstruction,
                                 const Posterior& posterior, double kl_weight, ReconstructionLoss kind);

// PSNR in dB of each image on [0, 1] (images given in [-1, 1], reconstructions clamped
// to it): 10 log10(1 / MSE). (B, C, H, W) x 2 -> (B) float64.
torch::Tensor psnr_db(const torch::Tensor& images, const torch::Tensor& reconstruction);

}  // namespace difftrain::model
