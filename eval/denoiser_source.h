// Where sampling gets its network from: a checkpoint's EMA weights, or a
// TorchScript file written by `difftrain export` or by Python. Both end up as
// the same diffusion::Network, so they sample identically.
//
// TorchScript denoiser contract (docs/EVALUATION.md):
//   forward(x_t: float32[B,C,H,W], t: int64[B] in [0,T), tokens: int64[B,L]) -> float32[B,C,H,W]  (eps-hat)
//   alphas_cumprod: float64[T]        (required attribute or buffer: defines the schedule)
//   image_shape: int64[3] = (C,H,W)   (optional; else --image-size)
//   max_tokens: int64[] = L           (optional; else --max-tokens)
// Tokens are byte tokens (model/tokenizer.h); all padding is the null condition.
// A file is checked when loaded (load_torchscript_denoiser): alphas_cumprod
// finite, strictly decreasing, inside (0, 1); image_shape / max_tokens within
// kMaxImageSize / kMaxTokens; a probe forward on a batch of 2 returns x_t's
// shape with finite values.
#pragma once

#include <string>

#include "diffusion/guidance.h"
#include "diffusion/objective.h"
#include "diffusion/schedule.h"
#include "model/unet.h"
#include "trainer/config.h"

namespace difftrain::eval {

struct DenoiserSource {
  diffusion::Network network;  // (x_t, t, tokens) -> output in `prediction`'s parameterisation
  diffusion::Prediction prediction = diffusion::Prediction::kEps;
  diffusion::NoiseSchedule schedule;
  int64_t channels = 3, image_size = 0, max_tokens = 0;
  std::string description;
  // What makes its images, for keying results (eval/fid_sweep): "checkpoint step=S sha256=..." over
  // the EMA parameters, buffers and the config; "torchscript sha256=..." of the file. Empty for
  // denoiser_from_model.
  std::string identity;
};

// Bounds on the geometry a denoiser (or `sample --image-size/--max-tokens`) may declare.
constexpr int64_t kMaxImageSize = 4096;
constexpr int64_t kMaxTokens = 4096;
// Timesteps an alphas_cumprod may have.
constexpr int64_t kMaxTimesteps = 100000;

DenoiserSource load_checkpoint_denoiser(const std::string& checkpoint_or_run_dir);
// A model in memory (e.g. the EMA weights during training), sampled as `config` says it was trained.
DenoiserSource denoiser_from_model(model::UNet net, const Config& config, const std::string& description);
// image_size / max_tokens: used when the file does not carry them (0 = not given).
// Throws std::runtime_error naming the file and what is wrong with it.
DenoiserSource load_torchscript_denoiser(const std::string& path, int64_t image_size, int64_t max_tokens);

// The same source with its network run under autocast ("fp32": unchanged;
// "bf16": CPU or GPU, e.g. the AMX units of recent Xeons); the sampler's own
// arithmetic stays float32. Throws std::invalid_argument for another name.
DenoiserSource with_precision(DenoiserSource source, const std::string& precision);

// Writes the checkpoint's EMA model, text encoder included, in the TorchScript
// denoiser form above; v-prediction models are converted to eps-hat inside it.
void export_denoiser(const std::string& checkpoint_or_run_dir, const std::string& path);

}  // namespace difftrain::eval
