// How the training loss weighs and samples timesteps.
//
// Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
// arXiv 2303.09556, sec. 3.4): the denoising tasks at different t conflict; weighing the loss
// of the x0 estimate by min(SNR(t), γ) (γ = 5) stops the low-noise steps dominating, 3.4× faster
// convergence in their figure 1. SNR(t) = ᾱ_t / (1 − ᾱ_t). Expressed on each network target with
// x_t = α x0 + σ ε (α = √ᾱ, σ = √(1 − ᾱ)):
//   x0-target:  ‖x0 − x̂0‖²                           weight min(SNR, γ)
//   ε-target:   ‖ε − ε̂‖² = SNR ‖x0 − x̂0‖²             weight min(SNR, γ) / SNR
//   v-target:   ‖v − v̂‖² = (SNR + 1) ‖x0 − x̂0‖²       weight min(SNR, γ) / (SNR + 1)
//   flow-target: ‖v_f − v̂_f‖² = (√SNR + 1)² ‖x0 − x̂0‖²   weight min(SNR, γ) / (√SNR + 1)²
// (v = α ε − σ x0, Salimans & Ho 2022; x̂0 = α x_t − σ v̂ gives x0 − x̂0 = σ (v̂ − v), σ² = 1 / (SNR + 1).
//  Rectified flow: x̂0 = x_flow − s v̂_f gives x0 − x̂0 = s (v̂_f − v_f), s = σ / (α + σ) = 1 / (√SNR + 1).)
//
// Log-normal timesteps (Karras et al. 2022, "Elucidating the Design Space...", table 1: training
// noise levels ln σ ~ N(P_mean, P_std²), P_mean = −1.2, P_std = 1.2): puts training where the
// denoiser's loss can still fall, instead of uniformly in t. On a discrete VP schedule σ is the
// EDM noise level of x_t / α, σ_t = √((1 − ᾱ_t) / ᾱ_t) = exp(−λ_t), and each draw takes the timestep
// whose λ_t is nearest to −ln σ.
//
// Logit-normal timesteps (Esser et al. 2024, arXiv 2403.03206, sec. 3.1 eq. 19, "rf/lognorm(0.00, 1.00)",
// SD3's choice): u = sigmoid(m + s z) in (0, 1) is the fraction of the way to pure noise; the draw is the
// timestep t = ⌈u T⌉ − 1, whose u_t = (t + 1) / T is the grid point at or above u. On the flow schedule
// (diffusion/schedule.h) the timestep shift then maps u to the noise level, which is SD3's shifted
// logit-normal distribution of noise levels (sec. 5.3.2); on a VP schedule it is the same law over t / T.
#pragma once

#include <torch/types.h>

#include <string>

#include "diffusion/objective.h"
#include "diffusion/schedule.h"

namespace difftrain::diffusion {

enum class LossWeighting { kUniform, kMinSnr };
LossWeighting parse_loss_weighting(const std::string& name);  // uniform | min_snr

// (B) float32 per-sample weights of the squared error on `prediction`'s target at timesteps t ((B) int64):
// ones for uniform, the Min-SNR-γ weight above for min_snr (for eps, v and x0 targets).
torch::Tensor loss_weights(LossWeighting weighting, Prediction prediction, const NoiseSchedule& schedule,
                           const torch::Tensor& t, double gamma);

// The timestep of a log-normal draw: ln σ = mean + std · z for a standard normal z, mapped to the
// nearest λ_t = −ln σ in [0, T − 1].
int64_t lognormal_timestep(const NoiseSchedule& schedule, double z, double mean, double std);

// The timestep of a logit-normal draw: u = sigmoid(mean + std · z), t = ⌈u T⌉ − 1 clamped to [0, T − 1].
int64_t logit_normal_timestep(int64_t timesteps, double z, double mean, double std);

}  // namespace difftrain::diffusion
