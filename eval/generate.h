// The one way images are generated from a denoiser: per-image seeds, guidance
// in one batched forward, any registered sampler. Used by `sample`, the FID
// sweep and the training-time FID point.
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "diffusion/sampler_registry.h"
#include "eval/denoiser_source.h"

namespace difftrain::eval {

// captions/seeds: one per image. Returns (B, C, H, W) float32 in [-1, 1] (not yet clamped or quantised).
// on_step (optional) gets the fraction of the sampler's steps done after each step,
// so a 1000-step DDPM batch reports progress while it runs.
torch::Tensor generate_images(const DenoiserSource& source, const diffusion::SamplerSpec& sampler, double guidance,
                              const std::vector<std::string>& captions, const std::vector<uint64_t>& seeds,
                              const std::function<void(double fraction)>& on_step = nullptr);

// The same with the network's condition input given directly: conditions (B, ...) one row per
// image, null (1, ...) the unconditional row (byte tokens, or packed embeddings for a model on
// precomputed embeddings, eval/prompt_embeddings.h; whichever the source's network takes).
torch::Tensor generate_from_conditions(const DenoiserSource& source, const diffusion::SamplerSpec& sampler,
                                       double guidance, const torch::Tensor& conditions, const torch::Tensor& null,
                                       const std::vector<uint64_t>& seeds,
                                       const std::function<void(double fraction)>& on_step = nullptr);

}  // namespace difftrain::eval
