#include "diffusion/samplers.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
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

void check_timesteps(const NoiseSchedule& schedule, const std::vector<int64_t>& ts) {
  TORCH_CHECK(!ts.empty(), "sampler: empty timestep list");
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK(ts[i] >= 0 && ts[i] < schedule.timesteps, "sampler: timestep ", ts[i], " outside 0..",
                schedule.timesteps - 1);
    TORCH_CHECK(i == 0 || ts[i] < ts[i - 1], "sampler: timesteps must be strictly descending");
  }
}

// One ancestral step x_t -> x_{t'} through the posterior q(x_{t'} | x_t, x0-hat) of the one-step process with
// beta = 1 - a / a' (Ho et al. 2020, eq. 6-7):
//   mean = sqrt(a') beta / (1 - a) x0 + sqrt(1 - beta) (1 - a') / (1 - a) x_t,
//   variance beta (1 - a') / (1 - a) (beta-tilde) or beta. No noise on the step to t' = -1 (a' = 1).
torch::Tensor posterior_step(const torch::Tensor& x, const torch::Tensor& x0, double a, double a_prev, double beta,
                             DdpmVariance variance, PerImageNoise& noise) {
  auto out = std::sqrt(a_prev) * beta / (1 - a) * x0 + std::sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x;
  if (a_prev < 1) {
    const double var = variance == DdpmVariance::kPosterior ? beta * (1 - a_prev) / (1 - a) : beta;
    out = out + std::sqrt(var) * noise.randn(shape_of_image(x), x.options());
  }
  return out;
}

// alpha_t, sigma_t and lambda_t = log(alpha_t / sigma_t) at an integer timestep.
struct Vp {
  double alpha, sigma, lambda;
};
Vp vp_at(const NoiseSchedule& schedule, int64_t t) {
  const double a = schedule.alpha_bar(t);
  return {std::sqrt(a), std::sqrt(1 - a), schedule.lambda(t)};
}

// DPM-Solver-2 from s to t through s1 (Lu et al. 2022, arXiv 2206.00927, Alg. 1, general r1):
//   u   = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
//   x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t / (2 r1) (e^h - 1) (eps(u, s1) - eps_s)
torch::Tensor dpm_solver_2_update(const EpsModel& model, const torch::Tensor& x, const torch::Tensor& eps_s,
                                  const NoiseSchedule& schedule, int64_t s, int64_t s1, int64_t t) {
  const Vp p_s = vp_at(schedule, s), p_1 = vp_at(schedule, s1), p_t = vp_at(schedule, t);
  const double h = p_t.lambda - p_s.lambda, r1 = (p_1.lambda - p_s.lambda) / h;
  auto u = (p_1.alpha / p_s.alpha) * x - p_1.sigma * std::expm1(r1 * h) * eps_s;
  auto d1 = model(u, full_t(s1, x)) - eps_s;
  return (p_t.alpha / p_s.alpha) * x - p_t.sigma * std::expm1(h) * eps_s -
         p_t.sigma / (2 * r1) * std::expm1(h) * d1;
}

// DPM-Solver-3 from s to t through s1, s2 (Lu et al. 2022, arXiv 2206.00927, Alg. 2, general r1, r2):
//   u1  = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s,                D1 = eps(u1, s1) - eps_s
//   u2  = (alpha_s2 / alpha_s) x - sigma_s2 (e^{r2 h} - 1) eps_s
//         - sigma_s2 r2 / r1 ((e^{r2 h} - 1) / (r2 h) - 1) D1,                    D2 = eps(u2, s2) - eps_s
//   x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t / r2 ((e^h - 1) / h - 1) D2
torch::Tensor dpm_solver_3_update(const EpsModel& model, const torch::Tensor& x, const torch::Tensor& eps_s,
                                  const NoiseSchedule& schedule, int64_t s, int64_t s1, int64_t s2, int64_t t) {
  const Vp p_s = vp_at(schedule, s), p_1 = vp_at(schedule, s1), p_2 = vp_at(schedule, s2), p_t = vp_at(schedule, t);
  const double h = p_t.lambda - p_s.lambda;
  const double r1 = (p_1.lambda - p_s.lambda) / h, r2 = (p_2.lambda - p_s.lambda) / h;
  auto u1 = (p_1.alpha / p_s.alpha) * x - p_1.sigma * std::expm1(r1 * h) * eps_s;
  auto d1 = model(u1, full_t(s1, x)) - eps_s;
  auto u2 = (p_2.alpha / p_s.alpha) * x - p_2.sigma * std::expm1(r2 * h) * eps_s -
            p_2.sigma * r2 / r1 * (std::expm1(r2 * h) / (r2 * h) - 1) * d1;
  auto d2 = model(u2, full_t(s2, x)) - eps_s;
  return (p_t.alpha / p_s.alpha) * x - p_t.sigma * std::expm1(h) * eps_s -
         p_t.sigma / r2 * (std::expm1(h) / h - 1) * d2;
}

// The single-step DPM-Solver loop; the order of each interval is set by how many interior timesteps it has.
torch::Tensor dpm_solver_single_step(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                     const std::vector<int64_t>& timesteps, int order,
                                     const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, schedule.alpha_bar(t), false);
    if (i + 1 == n) {
      x = x0;  // terminal step
    } else {
      const int64_t t_next = timesteps[i + 1];
      const auto mids = dpm_solver_intermediate_timesteps(schedule, t, t_next, order);
      if (mids.size() == 2) {
        x = dpm_solver_3_update(model, x, eps, schedule, t, mids[0], mids[1], t_next);
      } else if (mids.size() == 1) {
        x = dpm_solver_2_update(model, x, eps, schedule, t, mids[0], t_next);
      } else {  // DPM-Solver-1 (eq. 3.7), i.e. DDIM eta = 0
        const Vp p_s = vp_at(schedule, t), p_t = vp_at(schedule, t_next);
        x = (p_t.alpha / p_s.alpha) * x - p_t.sigma * std::expm1(p_t.lambda - p_s.lambda) * eps;
      }
    }
    if (callback) callback({i, n, t, x, x0});
  }
  return x;
}

// Karras et al. 2022's sigma for the VP process: sqrt((1 - alpha_bar) / alpha_bar).
double edm_sigma(const NoiseSchedule& schedule, int64_t t) {
  const double a = schedule.alpha_bar(t);
  return std::sqrt((1 - a) / a);
}

// Euler (Karras et al. 2022, Alg. 1 lines 4-5) or, with `heun`, the 2nd-order correction (lines 6-8) on every
// step except the terminal one. x_bar = x / alpha; the network sees x = alpha x_bar.
torch::Tensor edm_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                         const std::vector<int64_t>& timesteps, bool heun, const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  auto x_bar = x / std::sqrt(schedule.alpha_bar(timesteps[0]));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    const double sigma = edm_sigma(schedule, t);
    // d = (x_bar - D(x_bar; sigma)) / sigma with D = x_bar - sigma eps-hat: the derivative is eps-hat itself.
    auto d = model(x_bar * std::sqrt(schedule.alpha_bar(t)), full_t(t, x));
    auto denoised = x_bar - sigma * d;
    const int64_t t_next = i + 1 < n ? timesteps[i + 1] : -1;
    const double sigma_next = i + 1 < n ? edm_sigma(schedule, t_next) : 0.0;
    auto x_next = x_bar + (sigma_next - sigma) * d;
    if (heun && i + 1 < n) {
      const double alpha_next = std::sqrt(schedule.alpha_bar(t_next));
      auto d_next = model(x_next * alpha_next, full_t(t_next, x));
      x_next = x_bar + (sigma_next - sigma) * 0.5 * (d + d_next);
    }
    x_bar = x_next;
    auto x_t = x_bar * std::sqrt(schedule.alpha_bar(t_next));
    if (callback) callback({i, n, t, x_t, denoised});
  }
  return x_bar;
}

// Rectified-flow Euler or Heun (samplers.h). x (VP) -> x_flow = c x; the network is called at x_flow / c.
torch::Tensor flow_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, bool heun, const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  // v-hat = eps-hat - x0-hat at (x_flow, t); x0-hat = (x_t - sqrt(1 - a) eps-hat) / sqrt(a).
  auto velocity = [&](const torch::Tensor& x_flow, int64_t t, torch::Tensor* x0_out) {
    const double a = schedule.alpha_bar(t);
    auto x_t = x_flow / flow_input_scale(a);
    auto eps = model(x_t, full_t(t, x));
    auto x0 = (x_t - std::sqrt(1 - a) * eps) / std::sqrt(a);
    if (x0_out) *x0_out = x0;
    return eps - x0;
  };
  auto x_flow = x * flow_input_scale(schedule.alpha_bar(timesteps[0]));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    const int64_t t_next = i + 1 < n ? timesteps[i + 1] : -1;
    const double s = flow_sigma(schedule.alpha_bar(t)), s_next = flow_sigma(schedule.alpha_bar(t_next));
    torch::Tensor x0;
    auto v = velocity(x_flow, t, &x0);
    auto x_next = x_flow + (s_next - s) * v;
    if (heun && i + 1 < n) x_next = x_flow + (s_next - s) * 0.5 * (v + velocity(x_next, t_next, nullptr));
    x_flow = x_next;
    auto x_t = x_flow / flow_input_scale(schedule.alpha_bar(t_next));  // at t = -1: c = 1, x_t = x_flow = x_0
    if (callback) callback({i, n, t, x_t, x0});
  }
  return x_flow;
}

}  // namespace

torch::Tensor ddpm_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          DdpmVariance variance, PerImageNoise& noise, bool clip_x0, const SamplerCallback& callback) {
  torch::NoGradGuard no_grad;
  const int64_t T = schedule.timesteps;
  auto a_bar = schedule.alphas_cumprod.accessor<double, 1>();
  auto beta = schedule.betas.accessor<double, 1>();
  for (int64_t t = T - 1; t >= 0; --t) {
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, a_bar[t], clip_x0);
    x = posterior_step(x, x0, a_bar[t], t > 0 ? a_bar[t - 1] : 1.0, beta[t], variance, noise);
    if (callback) callback({T - 1 - t, T, t, x, x0});
  }
  return x;
}

torch::Tensor ddim_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, double eta, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback) {
  TORCH_CHECK(eta >= 0 && eta <= 1, "DDIM eta = ", eta, ": expected a value in [0, 1]");
  check_timesteps(schedule, timesteps);
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

torch::Tensor ddpm_naive_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                const std::vector<int64_t>& timesteps, DdpmVariance variance, PerImageNoise& noise,
                                bool clip_x0, const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    const double a = schedule.alpha_bar(t);
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, a, clip_x0);
    // The step t -> t-1 with the original beta_t; the result is then used as x at timesteps[i + 1].
    x = i + 1 == n ? x0
                   : posterior_step(x, x0, a, schedule.alpha_bar(t - 1), schedule.betas[t].item<double>(), variance,
                                    noise);
    if (callback) callback({i, n, t, x, x0});
  }
  return x;
}

torch::Tensor ddpm_respaced_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                   const std::vector<int64_t>& timesteps, DdpmVariance variance, PerImageNoise& noise,
                                   bool clip_x0, const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    const double a = schedule.alpha_bar(t), a_prev = schedule.alpha_bar(i + 1 < n ? timesteps[i + 1] : -1);
    auto eps = model(x, full_t(t, x));
    auto x0 = predict_x0(x, eps, a, clip_x0);
    // respace.py: beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_prev}; the last step (a_prev = 1) returns x0-hat.
    x = posterior_step(x, x0, a, a_prev, 1 - a / a_prev, variance, noise);
    if (callback) callback({i, n, t, x, x0});
  }
  return x;
}

std::vector<int64_t> dpm_solver_intermediate_timesteps(const NoiseSchedule& schedule, int64_t t, int64_t t_next,
                                                       int order) {
  TORCH_CHECK(order == 2 || order == 3, "DPM-Solver order ", order, ": expected 2 or 3");
  TORCH_CHECK(t > t_next && t_next >= 0, "DPM-Solver interval (", t_next, ", ", t, ") is empty");
  const int64_t interior = t - t_next - 1;
  if (interior == 0) return {};
  const double l = schedule.lambda(t), h = schedule.lambda(t_next) - l;
  if (order == 2 || interior == 1)
    return {nearest_timestep_for_lambda(schedule, l + 0.5 * h, t_next + 1, t - 1)};
  // Two distinct points: s1 leaves room below it for s2.
  const int64_t s1 = nearest_timestep_for_lambda(schedule, l + h / 3, t_next + 2, t - 1);
  const int64_t s2 = nearest_timestep_for_lambda(schedule, l + 2 * h / 3, t_next + 1, s1 - 1);
  return {s1, s2};
}

torch::Tensor dpm_solver_2_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                  const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return dpm_solver_single_step(model, std::move(x), schedule, timesteps, 2, callback);
}

torch::Tensor dpm_solver_3_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                  const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return dpm_solver_single_step(model, std::move(x), schedule, timesteps, 3, callback);
}

// Alg. 2 of arXiv 2211.01095 with x0-hat = x_theta, h_i = lambda_{t_i} - lambda_{t_{i-1}}, r_i = h_{i-1} / h_i:
//   D_i = (1 + 1 / (2 r_i)) x0-hat_{i-1} - 1 / (2 r_i) x0-hat_{i-2}   (D_1 = x0-hat_0: the first step is first order)
//   x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
torch::Tensor dpm_solver_pp_2m_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                      const std::vector<int64_t>& timesteps, bool clip_x0,
                                      const SamplerCallback& callback) {
  check_timesteps(schedule, timesteps);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(timesteps.size());
  torch::Tensor x0_prev;
  double h_prev = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = timesteps[i];
    auto x0 = predict_x0(x, model(x, full_t(t, x)), schedule.alpha_bar(t), clip_x0);
    if (i + 1 == n) {
      x = x0;  // terminal step
    } else {
      const Vp p_s = vp_at(schedule, t), p_t = vp_at(schedule, timesteps[i + 1]);
      const double h = p_t.lambda - p_s.lambda;
      auto d = x0;
      if (x0_prev.defined()) {
        const double r = h_prev / h;
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev;
      }
      x = (p_t.sigma / p_s.sigma) * x - p_t.alpha * std::expm1(-h) * d;
      h_prev = h;
    }
    if (callback) callback({i, n, t, x, x0});
    x0_prev = x0;
  }
  return x;
}

torch::Tensor euler_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                           const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return edm_sample(model, std::move(x), schedule, timesteps, false, callback);
}

torch::Tensor heun_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return edm_sample(model, std::move(x), schedule, timesteps, true, callback);
}

torch::Tensor flow_euler_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return flow_sample(model, std::move(x), schedule, timesteps, false, callback);
}

torch::Tensor flow_heun_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                               const std::vector<int64_t>& timesteps, const SamplerCallback& callback) {
  return flow_sample(model, std::move(x), schedule, timesteps, true, callback);
}

}  // namespace difftrain::diffusion
