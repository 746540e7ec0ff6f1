// The prompts of a sampling job as its denoiser takes them, and the one function that turns
// (prompt, seed) pairs into images for `sample`, the FID sweep and the training hooks: captions
// (byte tokens) for a model with the built-in text encoder, precomputed embeddings (packed rows,
// eval/prompt_embeddings.h) for one trained with model.conditioning=precomputed.
// Defines: PromptSet, generate_prompt_images.
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/sampler_registry.h"
#include "eval/denoiser_source.h"
#include "eval/prompt_embeddings.h"

namespace difftrain::eval {

struct PromptSet {
  std::vector<std::string> captions;                   // (P): labels, manifest entries; the prompts of builtin models
  std::shared_ptr<const PromptEmbeddings> embeddings;  // precomputed models: row p embeds captions[p]; else null

  PromptSet() = default;
  PromptSet(std::vector<std::string> prompts) : captions(std::move(prompts)) {}  // NOLINT: captions are prompts
  explicit PromptSet(PromptEmbeddings e)
      : captions(e.captions), embeddings(std::make_shared<const PromptEmbeddings>(std::move(e))) {}
  size_t size() const { return captions.size(); }
};

// Image k from prompt indices[k] and seed seeds[k]; (B, C, H, W) float32 in [-1, 1] (not yet
// clamped or quantised); a latent model's samples decoded by source.decoder (which it needs). Throws std::runtime_error when the set does not fit the source (embeddings
// for a builtin model, none for a precomputed one).
torch::Tensor generate_prompt_images(const DenoiserSource& source, const diffusion::SamplerSpec& sampler,
                                     double guidance, const PromptSet& prompts, const std::vector<int64_t>& indices,
                                     const std::vector<uint64_t>& seeds,
                                     const std::function<void(double fraction)>& on_step = nullptr);

}  // namespace difftrain::eval
