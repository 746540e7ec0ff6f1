#include "diffusion/schedule.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace difftrain::diffusion {

double NoiseSchedule::alpha_bar(int64_t t) const {
  return t < 0 ? 1.0 : alphas_cumprod[t].item<double>();
}

double NoiseSchedule::lambda(int64_t t) const {
  if (t < 0) return std::numeric_limits<double>::infinity();
  const double a = alphas_cumprod[t].item<double>();
  return 0.5 * (std::log(a) - std::log1p(-a));
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

NoiseSchedule flow_schedule(int64_t timesteps, double shift) {
  if (!(shift > 0) || !std::isfinite(shift))
    throw std::invalid_argument("flow schedule shift = " + std::to_string(shift) + ": expected a positive number");
  std::vector<double> alphas_cumprod(timesteps);
  for (int64_t t = 0; t < timesteps; ++t) {
    const double u = static_cast<double>(t + 1) / static_cast<double>(timesteps);
    const double s = shift * u / (1 + (shift - 1) * u);
    alphas_cumprod[t] = (1 - s) * (1 - s) / ((1 - s) * (1 - s) + s * s);
  }
  alphas_cumprod[timesteps - 1] = 0.0;  // s = 1 exactly, whatever the rounding
  return schedule_from_alphas_cumprod(torch::tensor(alphas_cumprod, torch::kFloat64));
}

double flow_sigma(double alpha_bar) {
  const double a = std::sqrt(alpha_bar), s = std::sqrt(1 - alpha_bar);
  return s / (a + s);
}

double flow_input_scale(double alpha_bar) { return 1 / (std::sqrt(alpha_bar) + std::sqrt(1 - alpha_bar)); }

NoiseSchedule make_schedule(const std::string& name, int64_t timesteps, bool zero_terminal_snr, double flow_shift) {
  NoiseSchedule s;
  if (name == "linear") s = linear_schedule(timesteps);
  else if (name == "cosine") s = cosine_schedule(timesteps);
  else if (name == "flow") return flow_schedule(timesteps, flow_shift);  // zero terminal SNR by construction
  else throw std::invalid_argument("unknown noise schedule '" + name + "' (expected linear, cosine or flow)");
  return zero_terminal_snr ? rescale_zero_terminal_snr(s) : s;
}

NoiseSchedule rescale_zero_terminal_snr(const NoiseSchedule& schedule) {
  // Lin et al. 2023, Algorithm 1: shift sqrt(alpha_bar) so the last is 0, scale so the first is kept.
  auto root = schedule.alphas_cumprod.sqrt();
  const double first = root[0].item<double>(), last = root[-1].item<double>();
  root = (root - last) * (first / (first - last));
  auto alphas_cumprod = root.pow(2);
  alphas_cumprod[-1] = 0.0;  // exactly, whatever the rounding of the line above
  return schedule_from_alphas_cumprod(alphas_cumprod);
}

NoiseSchedule with_finite_terminal_snr(const NoiseSchedule& schedule) {
  const double last = schedule.alphas_cumprod[-1].item<double>();
  if (last > 0) return schedule;
  const double before = schedule.timesteps > 1 ? schedule.alphas_cumprod[-2].item<double>() : 1.0;
  auto alphas_cumprod = schedule.alphas_cumprod.clone();
  alphas_cumprod[-1] = std::min(kTerminalSamplingAlphaBar, before / 4);
  return schedule_from_alphas_cumprod(alphas_cumprod);
}

torch::Tensor gather_coefficient(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like) {
  return table.to(like.device()).index_select(0, t.to(like.device())).to(like.scalar_type()).view({-1, 1, 1, 1});
}

torch::Tensor q_sample(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& t,
                       const torch::Tensor& noise) {
  auto a = gather_coefficient(schedule.alphas_cumprod, t, x0);
  return a.sqrt() * x0 + (1 - a).sqrt() * noise;
}

int64_t nearest_timestep_for_lambda(const NoiseSchedule& schedule, double target, int64_t lo, int64_t hi) {
  TORCH_CHECK(0 <= lo && lo <= hi && hi < schedule.timesteps, "timestep range [", lo, ", ", hi, "] out of bounds");
  // Binary search for the last t whose lambda is still >= target, then take the nearer of it and t + 1.
  int64_t a = lo, b = hi;
  if (schedule.lambda(lo) <= target) return lo;
  if (schedule.lambda(hi) >= target) return hi;
  while (b - a > 1) {
    const int64_t mid = (a + b) / 2;
    (schedule.lambda(mid) >= target ? a : b) = mid;
  }
  return schedule.lambda(a) - target <= target - schedule.lambda(b) ? a : b;
}

namespace {

void check_steps(int64_t T, int64_t steps) {
  if (steps < 1 || steps > T)
    throw std::invalid_argument("sampling steps = " + std::to_string(steps) + ": expected 1.." + std::to_string(T));
}

std::vector<int64_t> descending_unique(std::vector<int64_t> ts) {
  std::sort(ts.begin(), ts.end(), std::greater<>());
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());
  return ts;
}

// The nearest timestep to each target lambda, over the whole range.
std::vector<int64_t> timesteps_at_lambdas(const NoiseSchedule& schedule, const std::vector<double>& lambdas) {
  std::vector<int64_t> ts;
  for (double l : lambdas) ts.push_back(nearest_timestep_for_lambda(schedule, l, 0, schedule.timesteps - 1));
  return descending_unique(ts);
}

}  // namespace

std::vector<int64_t> sampling_timesteps(int64_t T, int64_t steps, const std::string& spacing) {
  check_steps(T, steps);
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
  } else if (spacing == "quadratic") {
    // As numpy.linspace: i * step, the last point exactly `end`; then truncated like the DDIM repo's int().
    const double end = std::sqrt(0.8 * T), step = steps > 1 ? end / (steps - 1) : 0.0;
    for (int64_t i = 0; i < steps; ++i) {
      const double r = steps > 1 && i == steps - 1 ? end : i * step;
      ts.push_back(std::min(static_cast<int64_t>(r * r), T - 1));
    }
  } else if (spacing == "logsnr" || spacing == "karras") {
    throw std::invalid_argument("timestep spacing '" + spacing + "' needs the noise schedule");
  } else {
    throw std::invalid_argument("unknown timestep spacing '" + spacing +
                                "' (expected leading, trailing, linspace, quadratic, logsnr or karras)");
  }
  return descending_unique(ts);
}

std::vector<int64_t> sampling_timesteps(const NoiseSchedule& schedule, int64_t steps, const std::string& spacing) {
  const int64_t T = schedule.timesteps;
  if (spacing != "logsnr" && spacing != "karras") return sampling_timesteps(T, steps, spacing);
  check_steps(T, steps);
  const double l_max = schedule.lambda(T - 1), l_min = schedule.lambda(0);  // l_max < l_min: noisiest first
  std::vector<double> lambdas;
  for (int64_t i = 0; i < steps; ++i) {
    const double u = steps == 1 ? 0.0 : static_cast<double>(i) / (steps - 1);
    if (spacing == "logsnr") {
      lambdas.push_back(l_max + u * (l_min - l_max));
    } else {
      constexpr double rho = 7.0;
      const double s_max = std::exp(-l_max), s_min = std::exp(-l_min);
      const double sigma =
          std::pow(std::pow(s_max, 1 / rho) + u * (std::pow(s_min, 1 / rho) - std::pow(s_max, 1 / rho)), rho);
      lambdas.push_back(-std::log(sigma));
    }
  }
  return timesteps_at_lambdas(schedule, lambdas);
}

}  // namespace difftrain::diffusion
