#include "diffusion/loss_weighting.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace difftrain::diffusion {

LossWeighting parse_loss_weighting(const std::string& name) {
  if (name == "uniform") return LossWeighting::kUniform;
  if (name == "min_snr") return LossWeighting::kMinSnr;
  throw std::invalid_argument("loss weighting '" + name + "': expected uniform or min_snr");
}

torch::Tensor loss_weights(LossWeighting weighting, Prediction prediction, const NoiseSchedule& schedule,
                           const torch::Tensor& t, double gamma) {
  if (weighting == LossWeighting::kUniform) return torch::ones({t.size(0)}, torch::kFloat32);
  const auto alpha_bar = schedule.alphas_cumprod.index_select(0, t.to(torch::kCPU));  // float64
  const auto snr = alpha_bar / (1 - alpha_bar);
  const auto clamped = torch::clamp_max(snr, gamma);
  const auto weight = prediction == Prediction::kEps    ? clamped / snr
                      : prediction == Prediction::kV    ? clamped / (snr + 1)
                      : prediction == Prediction::kFlow ? clamped / (snr.sqrt() + 1).pow(2)
                                                        : clamped;  // x0
  return weight.to(torch::kFloat32);
}

int64_t lognormal_timestep(const NoiseSchedule& schedule, double z, double mean, double std) {
  const double log_sigma = mean + std * z;
  return nearest_timestep_for_lambda(schedule, -log_sigma, 0, schedule.timesteps - 1);
}

int64_t logit_normal_timestep(int64_t timesteps, double z, double mean, double std) {
  const double u = 1 / (1 + std::exp(-(mean + std * z)));
  const auto t = static_cast<int64_t>(std::ceil(u * static_cast<double>(timesteps))) - 1;
  return std::clamp<int64_t>(t, 0, timesteps - 1);
}

}  // namespace difftrain::diffusion
