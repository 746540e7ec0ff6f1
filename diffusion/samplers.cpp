#include "diffusion/samplers.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

namespace difftrain::diffusion {

PerImageNoise::PerImageNoise(const std::vector<uint64_t>& seeds) {
  for (uint64_t seed : seeds) generators_.push_back(at::make_generator<at::CPUGeneratorImpl>(seed));
}

torch::Tensor PerImageNoise::randn(const std::vector<int64_t>& image_shape, const torch::TensorOptions& options) {
  std::vector<torch::Tensor> per_image;
  per_image.reserve(generators_.size());
  // Drawn on the CPU in float32 so an image is the same on every device.
  for (auto& g : generators_) per_image.push_back(torch::randn(image_shape, g, torch::kFloat32));
  return torch::stack(per_image).to(options);
}

namespace {

torch::Tensor full_t(int64_t t, const torch::Tensor& x) {
  return torch::full({x.size(0)}, t, x.options().dtype(torch::kInt64));
}

std::vector<int64_t> shape_of_image(const torch::Tensor& x) {
  return {x.size(1), x.size(2), x.size(3)};
}

// x0-hat from eps-hat (Ho et al. 2020, eq. 4 solved for x_0), optionally clipped to the data range.
torch::Tensor predict_x0(const torch::Tensor& x, const torch::Tensor& eps, double alpha_bar, bool clip) {
  auto x0 = (x - std::sqrt(1 - alpha_bar) * eps) / std::sqrt(alpha_bar);
  return clip ? x0.clamp(-1, 1) : x0;
}

}  // namespace

torch::Tensor ddpm_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          DdpmVariance variance, PerImageNoise& noise, bool clip_x0, const SamplerCallback& callback) {
  torch::NoGradGuard no_grad;
  const int64_t T = schedule.timesteps;
  auto a_bar = schedule.alphas_cumprod.accessor<double, 1>();
  auto beta = schedule.betas.accessor<double, 1>();
  for (int64_t t = T - 1; t >= 0; --t) {
    const double a = a_bar[t], a_prev = t > 0 ? a_bar[t - 1] : 1.0;
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, a, clip_x0);
    // Posterior mean, eq. 7: mu = sqrt(a_prev) beta_t / (1 - a) x0 + sqrt(alpha_t) (1 - a_prev) / (1 - a) x_t.
    const double coef_x0 = std::sqrt(a_prev) * beta[t] / (1 - a);
    const double coef_xt = std::sqrt(1 - beta[t]) * (1 - a_prev) / (1 - a);
    x = coef_x0 * x0 + coef_xt * x;
    if (t > 0) {
      const double var = variance == DdpmVariance::kPosterior ? beta[t] * (1 - a_prev) / (1 - a) : beta[t];
      x = x + std::sqrt(var) * noise.randn(shape_of_image(x), x.options());
    }
    if (callback) callback({T - 1 - t, T, t, x, x0});
  }
  return x;
}

torch::Tensor ddim_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, double eta, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback) {
  TORCH_CHECK(eta >= 0 && eta <= 1, "DDIM eta = ", eta, ": expected a value in [0, 1]");
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    const int64_t t_next = i + 1 < n ? timesteps[i + 1] : -1;
    const double a = schedule.alpha_bar(t), a_next = schedule.alpha_bar(t_next);
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, a, clip_x0);
    if (clip_x0) eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);  // keep eps consistent with the clipped x0
    const double sigma = eta * std::sqrt((1 - a_next) / (1 - a)) * std::sqrt(1 - a / a_next);
    x = std::sqrt(a_next) * x0 + std::sqrt(std::max(1 - a_next - sigma * sigma, 0.0)) * eps;
    if (sigma > 0) x = x + sigma * noise.randn(shape_of_image(x), x.options());
    if (callback) callback({i, n, t, x, x0});
  }
  return x;
}

}  // namespace difftrain::diffusion
