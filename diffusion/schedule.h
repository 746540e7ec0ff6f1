// Noise schedules of the DDPM family: beta_t for t = 0..T-1 and the derived
// alpha_bar_t = prod_{s<=t} (1 - beta_s), kept in float64 (small differences
// of alpha_bar near 1 matter for the samplers).
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace difftrain::diffusion {

struct NoiseSchedule {
  int64_t timesteps = 0;
  torch::Tensor betas;           // (T) float64
  torch::Tensor alphas_cumprod;  // (T) float64, alpha_bar_t

  double alpha_bar(int64_t t) const;  // t = -1 means "before the first step": 1.0
  // lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t): half the
  // log-SNR, the time variable of DPM-Solver (Lu et al. 2022, arXiv 2206.00927, sec. 3.1). +inf at t = -1.
  double lambda(int64_t t) const;
};

// Ho et al. 2020, sec. 4: beta linear from 1e-4 to 0.02 for T = 1000, rescaled
// by 1000 / T so that other T keep the same total noise (improved-diffusion).
NoiseSchedule linear_schedule(int64_t timesteps);
// Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, beta <= 0.999.
NoiseSchedule cosine_schedule(int64_t timesteps);
// Rectified flow (Liu et al. 2022; Esser et al. 2024, "Scaling Rectified Flow Transformers", arXiv 2403.03206,
// sec. 2 and 5.1): x_t = (1 - s_t) x0 + s_t eps on the straight line from data to noise, with
//   s_t = shift u / (1 + (shift - 1) u),  u = (t + 1) / T   (SD3's eq. 23 timestep shift; shift = 1: s_t = u),
// so s_{T-1} = 1 (pure noise) and s_0 = 1/T at shift 1. Scaled by 1 / sqrt((1 - s)^2 + s^2) it is the VP process
//   x_vp = sqrt(a) x0 + sqrt(1 - a) eps  with  alpha_bar_t = a = (1 - s)^2 / ((1 - s)^2 + s^2),
// which is the table kept here (alpha_bar_{T-1} = 0: zero terminal SNR by construction), so every sampler of the
// DDPM family runs on a flow model too; flow_sigma() and flow_input_scale() give the flow's own coordinates back.
NoiseSchedule flow_schedule(int64_t timesteps, double shift = 1.0);
// The rectified-flow noise level s of a VP alpha_bar: the x_t = (1 - s) x0 + s eps whose direction equals
// sqrt(a) x0 + sqrt(1 - a) eps, s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)); 0 at a = 1, 1 at a = 0.
double flow_sigma(double alpha_bar);
// x_flow = flow_input_scale(a) * x_vp, flow_input_scale = 1 / (sqrt(a) + sqrt(1 - a)) (in [1/sqrt(2), 1]).
double flow_input_scale(double alpha_bar);
// linear | cosine | flow. With zero_terminal_snr: rescale_zero_terminal_snr of the named schedule (a flow
// schedule is zero-terminal already). flow_shift: flow_schedule's shift (only "flow" reads it).
NoiseSchedule make_schedule(const std::string& name, int64_t timesteps, bool zero_terminal_snr = false,
                            double flow_shift = 1.0);

// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed" (arXiv 2305.08891),
// Algorithm 1: sqrt(alpha_bar) shifted and scaled linearly so that sqrt(alpha_bar_0) is kept and
// alpha_bar_{T-1} = 0 exactly (beta_{T-1} = 1): the last training step is pure noise, as sampling's
// start is. x0 is then not recoverable from eps at t = T-1, so the network predicts v or x0.
NoiseSchedule rescale_zero_terminal_snr(const NoiseSchedule& schedule);

// What sampling uses for a schedule whose alpha_bar_{T-1} is 0: the same schedule with alpha_bar_{T-1} =
// min(kTerminalSamplingAlphaBar, alpha_bar_{T-2} / 4), so that every sampler's 1/sqrt(alpha_bar), DPM-Solver's
// lambda_{T-1} = log(alpha/sigma) and the Karras/EDM sigma_max stay finite (diffusers does the same, 2^-24).
// A v-prediction's output converted to eps with it keeps x0-hat = sqrt(a) x - sqrt(1-a) v to float rounding.
// Any other schedule is returned as it is.
constexpr double kTerminalSamplingAlphaBar = 5.9604644775390625e-08;  // 2^-24
NoiseSchedule with_finite_terminal_snr(const NoiseSchedule& schedule);
NoiseSchedule schedule_from_alphas_cumprod(const torch::Tensor& alphas_cumprod);

// Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, eq. 4).
// x0, noise: (B, C, H, W); t: (B) int64.
torch::Tensor q_sample(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& t,
                       const torch::Tensor& noise);

// Per-sample coefficient gathered from a (T) float64 table and shaped (B, 1, 1, 1) in `like`'s dtype.
torch::Tensor gather_coefficient(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like);

// The integer timestep in [lo, hi] whose lambda is nearest to `target` (lambda decreases with t).
int64_t nearest_timestep_for_lambda(const NoiseSchedule& schedule, double target, int64_t lo, int64_t hi);

// Descending, duplicate-free integer timesteps for a run of `steps` timesteps out of T. Rounding can merge
// neighbours, so the result can hold FEWER than `steps` entries (quadratic, logsnr and karras at large `steps`).
//  leading:   0, k, 2k, ... with k = T / steps  (DDIM paper's "uniform" skip)
//  trailing:  T-1, T-1-k, ...           (Lin et al. 2023, table 2: starts at the last training step)
//  linspace:  round(linspace(0, T-1))   (the endpoints both included)
//  quadratic: int(linspace(0, sqrt(0.8 T), steps)^2)  (Song et al. 2020, DDIM repo's "quad" skip; truncated)
//  logsnr:    uniform in lambda from lambda(T-1) to lambda(0), each at its nearest timestep (Lu et al. 2022, sec. 3.4)
//  karras:    sigma_i = (smax^(1/7) + i/(n-1) (smin^(1/7) - smax^(1/7)))^7 between sigma(T-1) and sigma(0),
//             sigma = sqrt((1 - alpha_bar) / alpha_bar) = exp(-lambda), each at its nearest timestep
//             (Karras et al. 2022, eq. 5, rho = 7)
// The first form knows only T and rejects logsnr and karras, which need the schedule.
std::vector<int64_t> sampling_timesteps(int64_t timesteps, int64_t steps, const std::string& spacing);
std::vector<int64_t> sampling_timesteps(const NoiseSchedule& schedule, int64_t steps, const std::string& spacing);

}  // namespace difftrain::diffusion
