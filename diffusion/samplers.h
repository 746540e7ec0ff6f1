// Samplers: pure functions over one interface (k-diffusion style). Each takes
// an eps-model (guidance and parameterisation already applied), the starting
// noise x_T, the schedule, a descending list of integer timesteps, per-image
// noise and a callback, and returns x_0.
//
// Terminal step, the same for every sampler: after the last listed timestep
// t_n comes a step to "t = -1" (alpha_bar = 1, sigma = 0) whose result is the
// x0-prediction at t_n (the first-order DDIM / Euler step to sigma = 0). It costs
// one network evaluation at t_n. The callback runs once per listed timestep; the
// call for timestep t_i reports x at t_{i+1}, and the last one reports x_0.
// Works for float32 and float64 x; the schedule's coefficients stay float64.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "diffusion/schedule.h"

namespace difftrain::diffusion {

// eps-hat(x_t, t): x_t (B, C, H, W), t (B) int64 -> (B, C, H, W).
using EpsModel = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;

struct SamplerStep {
  int64_t index;            // 0-based step number
  int64_t total;            // number of steps (= listed timesteps)
  int64_t t;                // timestep being left
  const torch::Tensor& x;   // (B, C, H, W) x after this step: at the next listed timestep, or x_0 after the last
  const torch::Tensor& x0;  // (B, C, H, W) the model's prediction of x_0 at t
};
using SamplerCallback = std::function<void(const SamplerStep&)>;

// One generator per image, so an image's noise depends only on its own seed,
// never on batch size, batch position or the number of ranks.
class PerImageNoise {
 public:
  explicit PerImageNoise(const std::vector<uint64_t>& seeds);
  torch::Tensor randn(const std::vector<int64_t>& image_shape, const torch::TensorOptions& options);  // (B, ...)

 private:
  std::vector<at::Generator> generators_;
};

enum class DdpmVariance { kPosterior /* beta-tilde_t */, kBeta /* beta_t */ };

// Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2), written via
// the posterior q(x_{t-1} | x_t, x0-hat) (eq. 6-7) so x0-hat can be clipped.
torch::Tensor ddpm_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          DdpmVariance variance, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback = nullptr);

// DDIM (Song et al. 2020, eq. 12 and 16) over a descending subsequence of timesteps:
// x_{t'} = sqrt(a') x0-hat + sqrt(1 - a' - sigma^2) eps-hat + sigma z,
// sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a'). eta = 0 is deterministic, eta = 1 DDPM-like.
torch::Tensor ddim_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, double eta, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback = nullptr);

// DDPM over a kept subsequence, the known-degraded baseline: at kept t the one-step update t -> t-1 of
// ddpm_sample (original beta_t, alpha_t; Ho et al. 2020, Alg. 2) is applied, and its result is taken as x at the
// NEXT kept timestep. Each step removes the noise of one original step only, so few steps leave most of it in.
torch::Tensor ddpm_naive_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                const std::vector<int64_t>& timesteps, DdpmVariance variance, PerImageNoise& noise,
                                bool clip_x0, const SamplerCallback& callback = nullptr);

// DDPM over a kept subsequence with the betas respaced (Nichol & Dhariwal 2021, sec. 4; improved-diffusion
// respace.py): beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_prev}, then ordinary ancestral posterior steps (Ho et al.
// 2020, eq. 6-7) with variance beta-tilde'_i or beta'_i. With every timestep kept it is ddpm_sample.
torch::Tensor ddpm_respaced_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                   const std::vector<int64_t>& timesteps, DdpmVariance variance, PerImageNoise& noise,
                                   bool clip_x0, const SamplerCallback& callback = nullptr);

// Single-step DPM-Solver (Lu et al. 2022, arXiv 2206.00927). The network takes integer timesteps only, so each
// intermediate point is the interior integer timestep nearest (in lambda) to lambda_s + r h, with the targets
// r1 = 1/2 (order 2) and r1 = 1/3, r2 = 2/3 (order 3). The updates then use the exact r of the chosen points. An
// interval with too few interior timesteps falls back to the next lower order (order 1 is DDIM).
// Returns the chosen interior timesteps of (t_next, t), descending, 0..order-1 of them.
std::vector<int64_t> dpm_solver_intermediate_timesteps(const NoiseSchedule& schedule, int64_t t, int64_t t_next,
                                                       int order);
// Alg. 1 (DPM-Solver-2 with general r1).
torch::Tensor dpm_solver_2_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                  const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);
// Alg. 2 (DPM-Solver-3 with general r1, r2). Strictly third order only for r2 = 2/3; the rounding moves r2 by at
// most half a timestep's lambda over h (docs/SAMPLERS.md gives the measured order).
torch::Tensor dpm_solver_3_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                  const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);

// DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2): multistep, data prediction, one network evaluation
// per timestep. clip_x0 clips the x0-prediction it extrapolates from.
torch::Tensor dpm_solver_pp_2m_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                      const std::vector<int64_t>& timesteps, bool clip_x0,
                                      const SamplerCallback& callback = nullptr);

// Euler and Heun on the probability-flow ODE in EDM form (Karras et al. 2022, Alg. 1): state x-bar = x / alpha,
// time sigma = sqrt((1 - alpha_bar) / alpha_bar), dx-bar/dsigma = (x-bar - D(x-bar; sigma)) / sigma = eps-hat, the
// network seeing x = alpha x-bar at the integer timestep of that sigma. Euler is DDIM eta = 0 in another form.
// Heun's last step (to sigma = 0) is Euler: the terminal step.
torch::Tensor euler_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                           const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);
torch::Tensor heun_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);

// The rectified-flow ODE (Liu et al. 2022, arXiv 2209.03003; Esser et al. 2024, arXiv 2403.03206, sec. 2):
// dx_flow/ds = v(x_flow, s) = E[eps - x0 | x_flow], in the flow's own coordinates x_flow = c x_t, s = flow_sigma(a)
// (diffusion/schedule.h), from s(t_1) to s = 0. flow-euler: x_flow(s') = x_flow(s) + (s' - s) v-hat, the sampler
// of SD3 (diffusers' FlowMatchEulerDiscreteScheduler); on the same timesteps it equals DDIM (eta = 0), which moves
// along the same line from x0-hat to eps-hat. flow-heun: the trapezoidal correction with an Euler predictor
// (2nd order; Karras et al. 2022, Alg. 1 lines 6-8, in flow rather than EDM coordinates) on every step but the
// terminal one. v-hat = eps-hat - x0-hat from the eps-model, so any model (VP or flow) can be sampled this way.
torch::Tensor flow_euler_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                                const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);
torch::Tensor flow_heun_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                               const std::vector<int64_t>& timesteps, const SamplerCallback& callback = nullptr);

}  // namespace difftrain::diffusion
