#include "eval/generate.h"

#include <torch/torch.h>

#include <stdexcept>

#include "diffusion/guidance.h"
#include "model/tokenizer.h"
#include "trainer/batch_tensors.h"

namespace difftrain::eval {

torch::Tensor generate_images(const DenoiserSource& source, const diffusion::SamplerSpec& sampler, double guidance,
                              const std::vector<std::string>& captions, const std::vector<uint64_t>& seeds,
                              const std::function<void(double fraction)>& on_step) {
  TORCH_CHECK(captions.size() == seeds.size(), "generate_images: one seed per caption");
  const auto tokens = tokenize_batch(captions, source.max_tokens);
  const auto null_tokens = torch::full({1, tokens.size(1)}, model::kPadToken, tokens.options());  // all padding
  return generate_from_conditions(source, sampler, guidance, tokens, null_tokens, seeds, on_step);
}

torch::Tensor generate_from_conditions(const DenoiserSource& source, const diffusion::SamplerSpec& sampler,
                                       double guidance, const torch::Tensor& conditions, const torch::Tensor& null,
                                       const std::vector<uint64_t>& seeds,
                                       const std::function<void(double fraction)>& on_step) {
  TORCH_CHECK(conditions.size(0) == static_cast<int64_t>(seeds.size()), "generate_from_conditions: one seed per row");
  torch::NoGradGuard no_grad;
  diffusion::PerImageNoise noise(seeds);
  const auto null_rows = null.expand_as(conditions).contiguous();
  auto eps_model = diffusion::guided_eps_model(source.network, conditions, null_rows, guidance, source.prediction,
                                               source.schedule);
  const int64_t total = static_cast<int64_t>(diffusion::sampler_timesteps(sampler, source.schedule).size());
  // One reduction per network call and per step (not a host loop over elements): a NaN or inf
  // stops the run at the step that made it instead of surfacing as black images or a NaN FID.
  int64_t step = 0;
  const auto where = [&](int64_t t) {
    return "sampling with " + sampler.name + ", step " + std::to_string(step) + " of " + std::to_string(total) +
           " (t = " + std::to_string(t) + ", " + source.description + "): ";
  };
  diffusion::EpsModel checked = [&](const torch::Tensor& x, const torch::Tensor& t) {
    auto eps = eps_model(x, t);
    if (!torch::isfinite(eps).all().item<bool>())
      throw std::runtime_error(where(t[0].item<int64_t>()) + "the model's output is not finite (NaN or inf)");
    return eps;
  };
  auto x_T = noise.randn({source.channels, source.image_size, source.image_size}, torch::kFloat32);
  diffusion::SamplerCallback callback = [&](const diffusion::SamplerStep& s) {
    if (!torch::isfinite(s.x).all().item<bool>()) throw std::runtime_error(where(s.t) + "x_t is not finite (NaN or inf)");
    ++step;
    if (on_step) on_step(static_cast<double>(s.index + 1) / static_cast<double>(s.total));
  };
  return diffusion::run_sampler(sampler, checked, x_T, source.schedule, noise, callback);
}

}  // namespace difftrain::eval
