#include "eval/prompt_set.h"

#include <torch/torch.h>

#include <stdexcept>

#include "diffusion/guidance.h"
#include "eval/generate.h"

namespace difftrain::eval {

torch::Tensor generate_prompt_images(const DenoiserSource& source, const diffusion::SamplerSpec& sampler,
                                     double guidance, const PromptSet& prompts, const std::vector<int64_t>& indices,
                                     const std::vector<uint64_t>& seeds,
                                     const std::function<void(double fraction)>& on_step) {
  TORCH_CHECK(indices.size() == seeds.size(), "generate_prompt_images: one seed per prompt index");
  for (int64_t i : indices)
    TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(prompts.size()), "generate_prompt_images: prompt index ", i,
                " of ", prompts.size());
  if (source.latents && !source.decoder)
    throw std::runtime_error(source.description + " diffuses latents (data.latents=true): its samples need the VAE "
                             "decoder (--vae-decoder, docs/LATENTS.md)");
  // A latent model's samples become images here, for every caller (sample, sweep, training hooks).
  const auto to_images = [&](torch::Tensor x) { return source.decoder ? source.decoder->decode(x) : x; };
  if (!source.text) {
    if (prompts.embeddings)
      throw std::runtime_error(source.description + " conditions on caption text (its built-in text encoder), not on "
                               "precomputed embeddings (" + prompts.embeddings->source + ")");
    std::vector<std::string> captions;
    for (int64_t i : indices) captions.push_back(prompts.captions[static_cast<size_t>(i)]);
    return to_images(generate_images(source, sampler, guidance, captions, seeds, on_step));
  }
  if (!prompts.embeddings)
    throw std::runtime_error(source.description +
                             " was trained on precomputed text embeddings (model.conditioning=precomputed): its prompts "
                             "need embeddings (--text-encoder or --prompt-embeddings, docs/CONDITIONING.md)");
  return to_images(generate_from_conditions(source, sampler, guidance, packed_rows(*prompts.embeddings, indices),
                                            packed_null(*prompts.embeddings), seeds, on_step));
}

}  // namespace difftrain::eval
