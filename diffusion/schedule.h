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
};

// Ho et al. 2020, sec. 4: beta linear from 1e-4 to 0.02 for T = 1000, rescaled
// by 1000 / T so that other T keep the same total noise (improved-diffusion).
NoiseSchedule linear_schedule(int64_t timesteps);
// Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, beta <= 0.999.
NoiseSchedule cosine_schedule(int64_t timesteps);
NoiseSchedule make_schedule(const std::string& name, int64_t timesteps);
NoiseSchedule schedule_from_alphas_cumprod(const torch::Tensor& alphas_cumprod);

// Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, eq. 4).
// x0, noise: (B, C, H, W); t: (B) int64.
torch::Tensor q_sample(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& t,
                       const torch::Tensor& noise);

// Per-sample coefficient gathered from a (T) float64 table and shaped (B, 1, 1, 1) in `like`'s dtype.
torch::Tensor gather_coefficient(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like);

// Sampling timesteps (descending) for a run of `steps` network evaluations out of T.
//  leading:  0, k, 2k, ... with k = T / steps  (DDIM paper's "uniform" skip)
//  trailing: T-1, T-1-k, ...           (Lin et al. 2023, table 2: starts at the last training step)
//  linspace: round(linspace(0, T-1))   (the endpoints both included)
std::vector<int64_t> sampling_timesteps(int64_t timesteps, int64_t steps, const std::string& spacing);

}  // namespace difftrain::diffusion
