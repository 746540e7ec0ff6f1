#include "diffusion/schedule.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace difftrain::diffusion {

double NoiseSchedule::alpha_bar(int64_t t) const {
  return t < 0 ? 1.0 : alphas_cumprod[t].item<double>();
}

NoiseSchedule schedule_from_alphas_cumprod(const torch::Tensor& alphas_cumprod) {
  NoiseSchedule s;
  s.alphas_cumprod = alphas_cumprod.to(torch::kFloat64).contiguous();
  s.timesteps = s.alphas_cumprod.size(0);
  auto previous = torch::cat({torch::ones({1}, torch::kFloat64), s.alphas_cumprod.slice(0, 0, -1)});
  s.betas = 1.0 - s.alphas_cumprod / previous;
  return s;
}

NoiseSchedule linear_schedule(int64_t timesteps) {
  const double scale = 1000.0 / static_cast<double>(timesteps);
  auto betas = torch::linspace(scale * 1e-4, scale * 0.02, timesteps, torch::kFloat64);
  NoiseSchedule s;
  s.timesteps = timesteps;
  s.betas = betas;
  s.alphas_cumprod = torch::cumprod(1.0 - betas, 0);
  return s;
}

NoiseSchedule cosine_schedule(int64_t timesteps) {
  constexpr double s = 0.008;
  auto f = [&](double t) {
    const double v = std::cos((t / timesteps + s) / (1 + s) * M_PI / 2);
    return v * v;
  };
  std::vector<double> betas(timesteps);
  for (int64_t i = 0; i < timesteps; ++i) betas[i] = std::min(1.0 - f(i + 1) / f(i), 0.999);
  NoiseSchedule sched;
  sched.timesteps = timesteps;
  sched.betas = torch::tensor(betas, torch::kFloat64);
  sched.alphas_cumprod = torch::cumprod(1.0 - sched.betas, 0);
  return sched;
}

NoiseSchedule make_schedule(const std::string& name, int64_t timesteps) {
  if (name == "linear") return linear_schedule(timesteps);
  if (name == "cosine") return cosine_schedule(timesteps);
  throw std::invalid_argument("unknown noise schedule '" + name + "' (expected linear or cosine)");
}

torch::Tensor gather_coefficient(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like) {
  return table.to(like.device()).index_select(0, t.to(like.device())).to(like.scalar_type()).view({-1, 1, 1, 1});
}

torch::Tensor q_sample(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& t,
                       const torch::Tensor& noise) {
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x0);
  return a.sqrt() * x0 + (1 - a).sqrt() * noise;
}

std::vector<int64_t> sampling_timesteps(int64_t T, int64_t steps, const std::string& spacing) {
  if (steps < 1 || steps > T)
    throw std::invalid_argument("sampling steps = " + std::to_string(steps) + ": expected 1.." + std::to_string(T));
  std::vector<int64_t> ts;
  if (spacing == "leading") {
    const int64_t k = T / steps;
    for (int64_t i = 0; i < steps; ++i) ts.push_back(i * k);
  } else if (spacing == "trailing") {
    const double k = static_cast<double>(T) / steps;
    for (int64_t i = steps; i >= 1; --i) ts.push_back(static_cast<int64_t>(std::llround(i * k)) - 1);
  } else if (spacing == "linspace") {
    for (int64_t i = 0; i < steps; ++i)
      ts.push_back(steps == 1 ? T - 1 : static_cast<int64_t>(std::llround(i * (T - 1.0) / (steps - 1))));
  } else {
    throw std::invalid_argument("unknown timestep spacing '" + spacing + "' (expected leading, trailing or linspace)");
  }
  std::sort(ts.begin(), ts.end(), std::greater<>());
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());
  return ts;
}

}  // namespace difftrain::diffusion
