#include "diffusion/objective.h"

#include <stdexcept>

namespace difftrain::diffusion {

Prediction parse_prediction(const std::string& name) {
  if (name == "eps") return Prediction::kEps;
  if (name == "v") return Prediction::kV;
  if (name == "x0") return Prediction::kX0;
  if (name == "flow") return Prediction::kFlow;
  throw std::invalid_argument("unknown prediction '" + name + "' (expected eps, v, x0 or flow)");
}

bool clip_by_default(Prediction prediction, bool latent_data) {
  return !latent_data || prediction == Prediction::kEps;
}

torch::Tensor training_target(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& t) {
  if (prediction == Prediction::kEps) return noise;
  if (prediction == Prediction::kX0) return x0;
  if (prediction == Prediction::kFlow) return noise - x0;
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x0);
  return a.sqrt() * noise - (1 - a).sqrt() * x0;
}

namespace {
// c(t) = 1 / (sqrt(a) + sqrt(1 - a)), shaped (B, 1, 1, 1) in like's dtype.
torch::Tensor flow_scale(const NoiseSchedule& schedule, const torch::Tensor& t, const torch::Tensor& like) {
  const auto a = schedule.alphas_cumprod;
  return gather_coefficient(1 / (a.sqrt() + (1 - a).sqrt()), t, like);
}
}  // namespace

torch::Tensor network_input(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x_t,
                            const torch::Tensor& t) {
  if (prediction != Prediction::kFlow) return x_t;
  return flow_scale(schedule, t, x_t) * x_t;
}

torch::Tensor output_to_eps(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& output,
                            const torch::Tensor& x_t, const torch::Tensor& t) {
  if (prediction == Prediction::kEps) return output;
  if (prediction == Prediction::kX0) {
    // From x_t = sqrt(a) x0 + sqrt(1-a) eps: eps = (x_t - sqrt(a) x0) / sqrt(1-a).
    auto a = gather_coefficient(schedule.alphas_cumprod, t, x_t);
    return (x_t - a.sqrt() * output) / (1 - a).sqrt();
  }
  if (prediction == Prediction::kFlow) {
    // eps = x_flow + (1 - s) v = c (x_t + sqrt(a) v)  (objective.h).
    auto a = gather_coefficient(schedule.alphas_cumprod, t, x_t);
    return flow_scale(schedule, t, x_t) * (x_t + a.sqrt() * output);
  }
  // From x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0:
  // eps = sqrt(a) v + sqrt(1-a) x_t.
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x_t);
  return a.sqrt() * output + (1 - a).sqrt() * x_t;
}

}  // namespace difftrain::diffusion
