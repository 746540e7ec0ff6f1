// EDM2's power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024,
// "Analyzing and Improving the Training Dynamics of Diffusion Models", arXiv 2312.02696,
// section 3 and appendix C). Instead of one decay guessed before training, the run keeps a
// few EMA *profiles* (train.ema_profiles, relative widths sigma_rel) and stores snapshots of
// them; `difftrain ema-reconstruct --sigma-rel S` then builds the EMA of any width from them.
//
// A power-function EMA averages the weights theta(tau), tau = 1 .. t (optimizer steps), with
// the profile  p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)  on [0, t]  (eq. 3),
// by the update  theta_hat(t) = beta_t theta_hat(t - 1) + (1 - beta_t) theta(t),
//   beta_t = (1 - 1/t)^(gamma + 1)                                                   (eq. 4):
// the weight of step tau after step t is then (tau/t)^(gamma+1) - ((tau-1)/t)^(gamma+1),
// p integrated over step tau. Its relative width (std / t of the profile) is
//   sigma_rel = (gamma + 1)^(1/2) (gamma + 2)^(-1) (gamma + 3)^(-1/2)                 (eq. 2)
// (0.05 and 0.10 are EDM2's stored pair, gamma = 16.97 and 6.94). Any profile in the span of
// the stored snapshots' profiles is reconstructed by least squares in L2 over tau (app. C.1),
// with the closed-form inner product of two power profiles (`profile_dot`).
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <vector>

namespace difftrain {

// Widths in (0, kMaxSigmaRel): sigma_rel(gamma) falls from kMaxSigmaRel (gamma = 0, a plain
// running mean) to 0 (gamma -> infinity).
constexpr double kMaxSigmaRel = 0.28867513459481287;  // 1 / (2 sqrt 3)
double gamma_to_sigma_rel(double gamma);
// The gamma >= 0 of eq. 2 (the largest real root of gamma^3 + 7 gamma^2 + (16 - s) gamma + 12 - s
// with s = sigma_rel^-2); std::invalid_argument outside (0, kMaxSigmaRel).
double sigma_rel_to_gamma(double sigma_rel);
// beta_t of eq. 4 for step t >= 1 (beta_1 = 0: the first average is theta(1)).
double power_ema_beta(int64_t step, double gamma);

// <p_{t_a,gamma_a}, p_{t_b,gamma_b}> = integral over tau of the product of two profiles.
double profile_dot(double t_a, double gamma_a, double t_b, double gamma_b);

struct ProfileSnapshot {
  int64_t step;  // t
  double gamma;
};
struct Reconstruction {
  std::vector<double> coefficients;  // one per snapshot: the target ~ sum_i c_i snapshot_i
  double relative_error;             // || sum_i c_i p_i - p_target || / || p_target || (L2 over tau)
};
// The least-squares combination of the snapshots' profiles closest to p_{step,gamma}.
// std::invalid_argument when there is no snapshot or a snapshot is after `step`.
Reconstruction reconstruct_profile(const std::vector<ProfileSnapshot>& snapshots, int64_t step, double gamma);

// The profiles kept during training: one shadow network per sigma_rel, all updated after every
// optimizer step (the caller owns the networks; they start as copies of the model).
class PowerEma {
 public:
  PowerEma(torch::nn::Module& model, const std::vector<torch::nn::Module*>& profiles,
           const std::vector<double>& sigma_rels);
  void update(int64_t step);  // step: optimizer steps taken so far (>= 1)
  const std::vector<double>& gammas() const { return gammas_; }

 private:
  std::vector<torch::Tensor> model_params_;
  std::vector<std::vector<torch::Tensor>> profile_params_;
  std::vector<double> gammas_;
};

}  // namespace difftrain
