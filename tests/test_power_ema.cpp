// EDM2's power-function EMA (trainer/power_ema.h) against closed forms: sigma_rel <-> gamma
// (eq. 2 and the paper's values), the update's weights (eq. 4 telescoped), the profiles' inner
// product against numerical quadrature, and post-hoc reconstruction of a width that was not stored.
#include "trainer/power_ema.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

namespace dt = difftrain;

TEST(PowerEma, SigmaRelAndGammaAreEq2AndItsInverse) {
  // EDM2 section 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
  EXPECT_NEAR(dt::sigma_rel_to_gamma(0.05), 16.97, 0.005);
  EXPECT_NEAR(dt::sigma_rel_to_gamma(0.10), 6.94, 0.005);
  for (double s : {0.001, 0.01, 0.05, 0.1, 0.2, 0.28}) {
    const double g = dt::sigma_rel_to_gamma(s);
    EXPECT_NEAR(dt::gamma_to_sigma_rel(g), s, 1e-12 * s) << s;
    EXPECT_NEAR(g * g * g + 7 * g * g + (16 - 1 / (s * s)) * g + 12 - 1 / (s * s), 0, 1e-6 * g * g * g) << s;
  }
  EXPECT_DOUBLE_EQ(dt::gamma_to_sigma_rel(0), dt::kMaxSigmaRel);
  EXPECT_THROW(dt::sigma_rel_to_gamma(0), std::invalid_argument);
  EXPECT_THROW(dt::sigma_rel_to_gamma(0.3), std::invalid_argument);
}

TEST(PowerEma, UpdateWeighsStepTauBySuccessiveDifferencesOfTheProfilesIntegral) {
  // theta(tau) = e_tau (one coordinate per step): after t updates the average's coordinate tau is
  // its weight, (tau/t)^(gamma+1) - ((tau-1)/t)^(gamma+1).
  const int64_t t = 40;
  torch::nn::Linear model(torch::nn::LinearOptions(t, 1).bias(false)), a(torch::nn::LinearOptions(t, 1).bias(false)),
      b(torch::nn::LinearOptions(t, 1).bias(false));
  dt::PowerEma ema(*model, {a.get(), b.get()}, {0.05, 0.2});
  torch::NoGradGuard no_grad;
  a->weight.fill_(123), b->weight.fill_(-7);  // the first update replaces them (beta_1 = 0)
  for (int64_t step = 1; step <= t; ++step) {
    model->weight.zero_();
    model->weight[0][step - 1] = 1;
    ema.update(step);
  }
  for (int k = 0; k < 2; ++k) {
    const double g = ema.gammas()[static_cast<size_t>(k)];
    const auto w = (k == 0 ? a : b)->weight.to(torch::kFloat64)[0];
    double total = 0;
    for (int64_t tau = 1; tau <= t; ++tau) {
      const double expected = std::pow(double(tau) / t, g + 1) - std::pow(double(tau - 1) / t, g + 1);
      EXPECT_NEAR(w[tau - 1].item<double>(), expected, 1e-6) << "gamma " << g << " tau " << tau;
      total += w[tau - 1].item<double>();
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(PowerEma, ProfileDotIsTheIntegralOfTheProductOfTwoProfiles) {
  auto profile = [](double tau, double t, double g) { return tau <= t ? (g + 1) * std::pow(tau, g) / std::pow(t, g + 1) : 0.0; };
  for (auto [ta, ga, tb, gb] : std::vector<std::array<double, 4>>{{100, 6.94, 100, 16.97}, {60, 6.94, 100, 16.97},
                                                                 {100, 2, 37, 0.5}, {5, 0, 5, 0}}) {
    // Simpson's rule on [0, min(ta, tb)], where both are non-zero.
    const int n = 200000;
    const double top = std::min(ta, tb), h = top / n;
    double sum = 0;
    for (int i = 0; i <= n; ++i) {
      const double tau = i * h, f = profile(tau, ta, ga) * profile(tau, tb, gb);
      sum += f * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
    }
    EXPECT_NEAR(dt::profile_dot(ta, ga, tb, gb), sum * h / 3, 1e-7 * sum * h / 3) << ta << " " << ga << " " << tb << " " << gb;
    EXPECT_DOUBLE_EQ(dt::profile_dot(ta, ga, tb, gb), dt::profile_dot(tb, gb, ta, ga));
  }
}

TEST(PowerEma, ReconstructsAStoredProfileExactlyAndAnotherWidthFromTheSnapshots) {
  const double g05 = dt::sigma_rel_to_gamma(0.05), g10 = dt::sigma_rel_to_gamma(0.10);
  std::vector<dt::ProfileSnapshot> snapshots;
  for (int64_t s = 100; s <= 1000; s += 100) snapshots.push_back({s, g05}), snapshots.push_back({s, g10});
  // A stored one: itself, with nothing else (gelsd's minimum-norm solution of a consistent system).
  auto self = dt::reconstruct_profile(snapshots, 1000, g10);
  EXPECT_LT(self.relative_error, 1e-6);
  for (size_t i = 0; i < snapshots.size(); ++i)
    EXPECT_NEAR(self.coefficients[i], i + 1 == snapshots.size() ? 1.0 : 0.0, 1e-4) << i;

  // Weights theta(tau) = a smooth trajectory; both stored profiles kept by the update, snapshotted
  // every 100 steps; the width 0.07, never stored, reconstructed and compared with its own EMA.
  const int64_t t = 1000;
  const double g07 = dt::sigma_rel_to_gamma(0.07);
  auto theta = [](int64_t tau) { return std::sin(tau / 90.0) + 1e-3 * tau; };
  std::vector<double> stored(2, 0), snap;
  double direct = 0;
  for (int64_t step = 1; step <= t; ++step) {
    const double x = theta(step);
    stored[0] += (1 - dt::power_ema_beta(step, g05)) * (x - stored[0]);
    stored[1] += (1 - dt::power_ema_beta(step, g10)) * (x - stored[1]);
    direct += (1 - dt::power_ema_beta(step, g07)) * (x - direct);
    if (step % 100 == 0) snap.push_back(stored[0]), snap.push_back(stored[1]);
  }
  const auto r = dt::reconstruct_profile(snapshots, t, g07);
  EXPECT_LT(r.relative_error, 0.02);
  double rebuilt = 0;
  for (size_t i = 0; i < snap.size(); ++i) rebuilt += r.coefficients[i] * snap[i];
  // Far closer to the 0.07 average than either stored width is.
  const double nearest = std::min(std::abs(stored[0] - direct), std::abs(stored[1] - direct));
  EXPECT_GT(nearest, 0.01);
  EXPECT_LT(std::abs(rebuilt - direct), 0.05 * nearest) << rebuilt << " vs " << direct << ", stored " << stored[0]
                                                       << ", " << stored[1];
  EXPECT_THROW(dt::reconstruct_profile(snapshots, 900, g07), std::invalid_argument);  // a snapshot after the step
  EXPECT_THROW(dt::reconstruct_profile({}, 900, g07), std::invalid_argument);
}
