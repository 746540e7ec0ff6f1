#include "eval/generate.h"

#include <torch/torch.h>

#include "diffusion/guidance.h"
#include "model/tokenizer.h"
#include "trainer/batch_tensors.h"

namespace difftrain::eval {

torch::Tensor generate_images(const DenoiserSource& source, const diffusion::SamplerSpec& sampler, double guidance,
                              const std::vector<std::string>& captions, const std::vector<uint64_t>& seeds,
                              const std::function<void(double fraction)>& on_step) {
  TORCH_CHECK(captions.size() == seeds.size(), "generate_images: one seed per caption");
  torch::NoGradGuard no_grad;
  diffusion::PerImageNoise noise(seeds);
  auto tokens = tokenize_batch(captions, source.max_tokens);
  auto null_tokens = torch::full_like(tokens, model::kPadToken);
  auto eps_model =
      diffusion::guided_eps_model(source.network, tokens, null_tokens, guidance, source.prediction, source.schedule);
  auto x_T = noise.randn({source.channels, source.image_size, source.image_size}, torch::kFloat32);
  diffusion::SamplerCallback callback;
  if (on_step)
    callback = [&](const diffusion::SamplerStep& step) {
      on_step(static_cast<double>(step.index + 1) / static_cast<double>(step.total));
    };
  return diffusion::run_sampler(sampler, eps_model, x_T, source.schedule, noise, callback);
}

}  // namespace difftrain::eval
