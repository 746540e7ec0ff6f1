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
// A model trained on precomputed text embeddings (model.conditioning=precomputed) is exported as
//   forward(x_t: float32[B,C,H,W], t: int64[B], context: float32[B,L,D], mask: bool[B,L]
//           [, pooled: float32[B,D']]) -> float32[B,C,H,W]  (eps-hat)
//   context_dim: int64[] = D, pooled_dim: int64[] = D' (0: no pooled input)
// (docs/CONDITIONING.md "Sampling"); loading one back takes the same checks.
// A file is checked when loaded (load_torchscript_denoiser): alphas_cumprod
// finite, strictly decreasing, inside (0, 1); image_shape / max_tokens within
// kMaxImageSize / kMaxTokens; a probe forward on a batch of 2 returns x_t's
// shape with finite values.
#pragma once

#include <optional>
#include <string>

#include "diffusion/guidance.h"
#include "diffusion/objective.h"
#include "diffusion/schedule.h"
#include "eval/latent_decoder.h"
#include "eval/prompt_embeddings.h"
#include "model/unet.h"
#include "trainer/config.h"

namespace difftrain::eval {

struct DenoiserSource {
  // (x_t, t, condition) -> output in `prediction`'s parameterisation. The condition is (B, L) byte
  // tokens, or with `text` set one packed float32 row of (context, mask, pooled) per image
  // (eval/prompt_embeddings.h pack_conditions), so guidance batches either the same way.
  diffusion::Network network;
  diffusion::Prediction prediction = diffusion::Prediction::kEps;
  diffusion::NoiseSchedule schedule;
  int64_t channels = 3, image_size = 0, max_tokens = 0;
  std::string description;
  // What makes its images, for keying results (eval/fid_sweep): "checkpoint step=S sha256=..." over
  // the EMA parameters, buffers and the config; "torchscript sha256=..." of the file. Empty for
  // denoiser_from_model.
  std::string identity;
  // Set when the model conditions on precomputed text embeddings (model.conditioning=precomputed):
  // their shape, and the encoder and null condition it was trained with.
  std::optional<TextConditioning> text;
  // A latent model (data.latents): channels/image_size above are the latents'; sampling needs a
  // decoder (attach_latent_decoder) to give images.
  bool latents = false;
  std::optional<LatentDecoder> decoder;
};

// The images' (C, H) a source's samples have: the decoder's output for a latent model, else its own.
int64_t output_channels(const DenoiserSource& source);
int64_t output_size(const DenoiserSource& source);

// Attaches the VAE decoder `path` (may be empty) to a source loaded from a checkpoint trained with
// `config`. A latent model without one, or a pixel model with one, is a std::runtime_error saying
// what to pass; `option` names the flag or key in that message (--vae-decoder, eval.vae_decoder).
void attach_latent_decoder(DenoiserSource* source, const Config& config, const std::string& path,
                           const std::string& option);

// Bounds on the geometry a denoiser (or `sample --image-size/--max-tokens`) may declare.
constexpr int64_t kMaxImageSize = 4096;
constexpr int64_t kMaxTokens = 4096;
// Timesteps an alphas_cumprod may have.
constexpr int64_t kMaxTimesteps = 100000;

// A latent model (data.latents) needs `vae_decoder`, the TorchScript decoder of its latents; a
// pixel model must not get one (attach_latent_decoder).
DenoiserSource load_checkpoint_denoiser(const std::string& checkpoint_or_run_dir, const std::string& vae_decoder = "");
// A model in memory (e.g. the EMA weights during training), sampled as `config` says it was trained.
// Without gradients its network keeps the built-in text encoder's output for repeated captions
// (a sampler's every step): make a new source after the weights change, as the training hooks do.
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
// A precomputed-conditioning model gets the (x_t, t, context, mask[, pooled]) form.
void export_denoiser(const std::string& checkpoint_or_run_dir, const std::string& path);
// The same for a model in memory built from `config` (e.g. `difftrain model-info --export`).
void export_denoiser(model::UNet net, const Config& config, const std::string& path);

}  // namespace difftrain::eval
