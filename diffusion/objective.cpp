#include "diffusion/objective.h"

#include <stdexcept>

namespace difftrain::diffusion {

Prediction parse_prediction(const std::string& name) {
  if (name == "eps") return Prediction::kEps;
  if (name == "v") return Prediction::kV;
  if (name == "x0") return Prediction::kX0;
  throw std::invalid_argument("unknown prediction '" + name + "' (expected eps, v or x0)");
}

torch::Tensor training_target(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& t) {
  if (prediction == Prediction::kEps) return noise;
  if (prediction == Prediction::kX0) return x0;
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x0);
  return a.sqrt() * noise - (1 - a).sqrt() * x0;
}

torch::Tensor output_to_eps(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& output,
                            const torch::Tensor& x_t, const torch::Tensor& t) {
  if (prediction == Prediction::kEps) return output;
  if (prediction == Prediction::kX0) {
    // From x_t = sqrt(a) x0 + sqrt(1-a) eps: eps = (x_t - sqrt(a) x0) / sqrt(1-a).
    auto a = gather_coefficient(schedule.alphas_cumprod, t, x_t);
    return (x_t - a.sqrt() * output) / (1 - a).sqrt();
  }
  // From x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0:
  // eps = sqrt(a) v + sqrt(1-a) x_t.
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x_t);
  return a.sqrt() * output + (1 - a).sqrt() * x_t;
}

}  // namespace difftrain::diffusion
