#include "trainer/power_ema.h"

#include <torch/torch.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace difftrain {

double gamma_to_sigma_rel(double gamma) {
  return std::sqrt(gamma + 1) / ((gamma + 2) * std::sqrt(gamma + 3));
}

double sigma_rel_to_gamma(double sigma_rel) {
  if (!(sigma_rel > 0 && sigma_rel < kMaxSigmaRel))
    throw std::invalid_argument("sigma_rel = " + std::to_string(sigma_rel) + ": expected a value in (0, " +
                                std::to_string(kMaxSigmaRel) + ")");
  // sigma_rel(gamma) decreases on [0, inf): bisection to double precision.
  double lo = 0, hi = 1;
  while (gamma_to_sigma_rel(hi) > sigma_rel) hi *= 2;
  for (int i = 0; i < 200 && hi - lo > 1e-14 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (gamma_to_sigma_rel(mid) > sigma_rel ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double power_ema_beta(int64_t step, double gamma) {
  if (step < 1) throw std::invalid_argument("power_ema_beta: step " + std::to_string(step) + " < 1");
  return std::pow(1.0 - 1.0 / static_cast<double>(step), gamma + 1);
}

double profile_dot(double t_a, double gamma_a, double t_b, double gamma_b) {
  // (gamma_a+1)(gamma_b+1) / (t_a^(gamma_a+1) t_b^(gamma_b+1)) * min(t_a,t_b)^(gamma_a+gamma_b+1) / (gamma_a+gamma_b+1),
  // written with the ratio of the two times so that no power overflows.
  const double ratio = t_a < t_b ? std::pow(t_a / t_b, gamma_b) : std::pow(t_b / t_a, gamma_a);
  return (gamma_a + 1) * (gamma_b + 1) * ratio / ((gamma_a + gamma_b + 1) * std::max(t_a, t_b));
}

Reconstruction reconstruct_profile(const std::vector<ProfileSnapshot>& snapshots, int64_t step, double gamma) {
  if (snapshots.empty()) throw std::invalid_argument("reconstruct_profile: no snapshot to reconstruct from");
  const auto n = static_cast<int64_t>(snapshots.size());
  auto gram = torch::empty({n, n}, torch::kFloat64), target = torch::empty({n, 1}, torch::kFloat64);
  auto g = gram.accessor<double, 2>();
  auto b = target.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const auto& si = snapshots[static_cast<size_t>(i)];
    if (si.step < 1 || si.step > step)
      throw std::invalid_argument("reconstruct_profile: a snapshot at step " + std::to_string(si.step) +
                                  " for a reconstruction at step " + std::to_string(step));
    for (int64_t j = 0; j < n; ++j) {
      const auto& sj = snapshots[static_cast<size_t>(j)];
      g[i][j] = profile_dot(static_cast<double>(si.step), si.gamma, static_cast<double>(sj.step), sj.gamma);
    }
    b[i][0] = profile_dot(static_cast<double>(si.step), si.gamma, static_cast<double>(step), gamma);
  }
  // gelsd (SVD) copes with the nearly dependent profiles of neighbouring snapshots.
  const auto solution = std::get<0>(torch::linalg_lstsq(gram, target, c10::nullopt, "gelsd"));
  Reconstruction r;
  const auto c = solution.squeeze(1).contiguous();
  r.coefficients.assign(c.data_ptr<double>(), c.data_ptr<double>() + n);
  const double self = profile_dot(static_cast<double>(step), gamma, static_cast<double>(step), gamma);
  const double err2 = (solution.t().matmul(gram).matmul(solution) - 2 * solution.t().matmul(target)).item<double>() + self;
  r.relative_error = std::sqrt(std::max(err2, 0.0) / self);
  return r;
}

PowerEma::PowerEma(torch::nn::Module& model, const std::vector<torch::nn::Module*>& profiles,
                   const std::vector<double>& sigma_rels)
    : model_params_(model.parameters()) {
  TORCH_CHECK(profiles.size() == sigma_rels.size(), "PowerEma: ", profiles.size(), " networks for ",
              sigma_rels.size(), " widths");
  for (size_t k = 0; k < profiles.size(); ++k) {
    auto params = profiles[k]->parameters();
    TORCH_CHECK(params.size() == model_params_.size(), "PowerEma: profile ", k, " differs from the model");
    for (auto& p : params) p.set_requires_grad(false);
    profile_params_.push_back(std::move(params));
    gammas_.push_back(sigma_rel_to_gamma(sigma_rels[k]));
  }
}

void PowerEma::update(int64_t step) {
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < profile_params_.size(); ++k) {
    const double weight = 1.0 - power_ema_beta(step, gammas_[k]);
    for (size_t i = 0; i < model_params_.size(); ++i) profile_params_[k][i].lerp_(model_params_[i], weight);
  }
}

}  // namespace difftrain
