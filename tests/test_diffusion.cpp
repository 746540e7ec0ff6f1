// Samplers and schedules checked against closed forms: for Gaussian data
// x0 ~ N(mu, s^2 I) the optimal eps-predictor and the probability-flow ODE map
// are known exactly, so sampler error can be measured, not guessed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "diffusion/guidance.h"
#include "diffusion/loss_weighting.h"
#include "diffusion/objective.h"
#include "diffusion/samplers.h"
#include "diffusion/schedule.h"

namespace dd = difftrain::diffusion;

namespace {

constexpr double kMu = 0.3, kS = 0.5;

// E[eps | x_t] for x0 ~ N(mu, s^2): sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
dd::EpsModel gaussian_optimal_eps(const dd::NoiseSchedule& schedule) {
  return [schedule](const torch::Tensor& x, const torch::Tensor& t) {
    auto a = dd::gather_coefficient(schedule.alphas_cumprod, t, x);
    return (1 - a).sqrt() * (x - a.sqrt() * kMu) / (a * kS * kS + 1 - a);
  };
}

// The probability-flow ODE keeps the standardised value: x0 = mu + s (x_T - sqrt(a_T) mu) / sqrt(a_T s^2 + 1 - a_T).
torch::Tensor exact_ode_map(const torch::Tensor& xT, double a_T) {
  return kMu + kS * (xT - std::sqrt(a_T) * kMu) / std::sqrt(a_T * kS * kS + 1 - a_T);
}

std::vector<uint64_t> seeds(int64_t n, uint64_t base = 0) {
  std::vector<uint64_t> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = base + i;
  return s;
}

}  // namespace

TEST(Schedule, LinearMatchesHoEtAl) {
  auto s = dd::linear_schedule(1000);
  EXPECT_NEAR(s.betas[0].item<double>(), 1e-4, 1e-12);
  EXPECT_NEAR(s.betas[999].item<double>(), 0.02, 1e-12);
  double prod = 1;
  for (int t = 0; t < 1000; ++t) prod *= 1 - (1e-4 + (0.02 - 1e-4) * t / 999.0);
  EXPECT_NEAR(s.alphas_cumprod[999].item<double>(), prod, 1e-12);
}

TEST(Schedule, CosineMatchesNicholDhariwalEq17) {
  auto s = dd::cosine_schedule(1000);
  auto f = [](double t) { return std::pow(std::cos((t / 1000 + 0.008) / 1.008 * M_PI / 2), 2); };
  for (int t : {0, 10, 500, 900}) EXPECT_NEAR(s.alphas_cumprod[t].item<double>(), f(t + 1) / f(0), 1e-9) << t;
  EXPECT_LE(s.betas.max().item<double>(), 0.999);
}

// Lin et al. 2023, Algorithm 1: sqrt(alpha_bar) is an affine function of the original's, with the first value kept
// and the last 0; beta_{T-1} = 1, every other beta in (0, 1). Sampling reads alpha_bar_{T-1} = min(2^-24, a_{T-2}/4).
TEST(Schedule, ZeroTerminalSnrIsLinEtAlAlgorithm1) {
  for (const char* name : {"linear", "cosine"}) {
    const auto base = dd::make_schedule(name, 1000);
    const auto z = dd::make_schedule(name, 1000, /*zero_terminal_snr=*/true);
    EXPECT_EQ(z.alpha_bar(999), 0.0);
    EXPECT_NEAR(z.alpha_bar(0), base.alpha_bar(0), 1e-15);
    const double r0 = std::sqrt(base.alpha_bar(0)), r1 = std::sqrt(base.alpha_bar(999));
    for (int64_t t : {1, 10, 300, 700, 998}) {
      const double affine = (std::sqrt(base.alpha_bar(t)) - r1) * r0 / (r0 - r1);
      EXPECT_NEAR(std::sqrt(z.alpha_bar(t)), affine, 1e-12) << name << " t " << t;
      EXPECT_LT(z.alpha_bar(t), base.alpha_bar(t)) << name << " t " << t;
    }
    EXPECT_DOUBLE_EQ(z.betas[999].item<double>(), 1.0);
    EXPECT_TRUE((z.betas.slice(0, 0, 999) > 0).all().item<bool>());
    EXPECT_TRUE((z.betas.slice(0, 0, 999) < 1).all().item<bool>());
    // Training's forward process at T-1 is pure noise.
    const auto x0 = torch::randn({2, 1, 2, 2}), noise = torch::randn({2, 1, 2, 2});
    EXPECT_TRUE(dd::q_sample(z, x0, torch::tensor({999, 999}), noise).equal(noise));
    const auto s = dd::with_finite_terminal_snr(z);
    EXPECT_EQ(s.alpha_bar(999), std::min(dd::kTerminalSamplingAlphaBar, z.alpha_bar(998) / 4));
    EXPECT_TRUE(s.alphas_cumprod.slice(0, 0, 999).equal(z.alphas_cumprod.slice(0, 0, 999)));
    EXPECT_TRUE(dd::with_finite_terminal_snr(base).alphas_cumprod.equal(base.alphas_cumprod));  // untouched
  }
}

TEST(Schedule, RoundTripsThroughAlphasCumprod) {
  auto s = dd::cosine_schedule(100);
  auto r = dd::schedule_from_alphas_cumprod(s.alphas_cumprod);
  EXPECT_TRUE(torch::allclose(r.betas, s.betas, 1e-10, 1e-12));
}

TEST(Schedule, TimestepSpacings) {
  EXPECT_EQ(dd::sampling_timesteps(1000, 4, "leading"), (std::vector<int64_t>{750, 500, 250, 0}));
  EXPECT_EQ(dd::sampling_timesteps(1000, 4, "trailing"), (std::vector<int64_t>{999, 749, 499, 249}));
  EXPECT_EQ(dd::sampling_timesteps(1000, 4, "linspace"), (std::vector<int64_t>{999, 666, 333, 0}));
  EXPECT_EQ(dd::sampling_timesteps(10, 10, "trailing").size(), 10u);
  EXPECT_THROW(dd::sampling_timesteps(10, 11, "trailing"), std::invalid_argument);
  EXPECT_THROW(dd::sampling_timesteps(10, 5, "sideways"), std::invalid_argument);
}

TEST(Forward, QSampleHasTheMarginalOfEq4) {
  auto s = dd::linear_schedule(1000);
  torch::manual_seed(0);
  auto x0 = torch::full({200000, 1, 1, 1}, 2.0);
  auto t = torch::full({200000}, 300, torch::kInt64);
  auto xt = dd::q_sample(s, x0, t, torch::randn_like(x0));
  const double a = s.alphas_cumprod[300].item<double>();
  EXPECT_NEAR(xt.mean().item<double>(), std::sqrt(a) * 2.0, 0.01);
  EXPECT_NEAR(xt.var().item<double>(), 1 - a, 0.01);
}

TEST(Objective, VAndX0PredictionsConvertBackToEps) {
  auto s = dd::cosine_schedule(1000);
  torch::manual_seed(1);
  auto x0 = torch::randn({8, 3, 4, 4}), eps = torch::randn({8, 3, 4, 4});
  auto t = torch::randint(0, 1000, {8}, torch::kInt64);
  auto xt = dd::q_sample(s, x0, t, eps);
  auto v = dd::training_target(dd::Prediction::kV, s, x0, eps, t);
  EXPECT_TRUE(torch::allclose(dd::output_to_eps(dd::Prediction::kV, s, v, xt, t), eps, 1e-4, 1e-5));
  // x0-prediction: the exact x0 converts back to the exact eps (away from t = 0, where 1 - alpha_bar -> 0
  // amplifies float32 rounding).
  auto x0_target = dd::training_target(dd::Prediction::kX0, s, x0, eps, t);
  EXPECT_TRUE(torch::equal(x0_target, x0));
  const auto late = t > 50;
  EXPECT_TRUE(torch::allclose(dd::output_to_eps(dd::Prediction::kX0, s, x0, xt, t).index({late}), eps.index({late}),
                              1e-3, 1e-4));
}

// Rectified flow, written here from Esser et al. 2024 (eq. 1-3 and 23) in the flow's own coordinates, not through
// the VP table: s_t = shift u / (1 + (shift - 1) u), u = (t + 1) / T; the network sees (1 - s) x0 + s eps and
// predicts eps - x0.
TEST(Objective, RectifiedFlowIsTheStraightPathWithSd3sShift) {
  for (const double shift : {1.0, 3.0}) {
    const int64_t T = 1000;
    const auto schedule = dd::make_schedule("flow", T, false, shift);
    ASSERT_EQ(schedule.alpha_bar(T - 1), 0.0);  // pure noise at the last step
    torch::manual_seed(2);
    auto x0 = torch::randn({6, 3, 4, 4}, torch::kFloat64), eps = torch::randn({6, 3, 4, 4}, torch::kFloat64);
    auto t = torch::tensor({0, 1, 250, 500, 998, 999}, torch::kInt64);
    std::vector<double> sigmas;
    for (int64_t i = 0; i < t.size(0); ++i) {
      const double u = static_cast<double>(t[i].item<int64_t>() + 1) / T;
      sigmas.push_back(shift * u / (1 + (shift - 1) * u));
      EXPECT_NEAR(dd::flow_sigma(schedule.alpha_bar(t[i].item<int64_t>())), sigmas.back(), 1e-12);
    }
    const auto s = torch::tensor(sigmas, torch::kFloat64).view({6, 1, 1, 1});
    const auto x_flow = (1 - s) * x0 + s * eps;
    const auto x_t = dd::q_sample(schedule, x0, t, eps);
    const auto input = dd::network_input(dd::Prediction::kFlow, schedule, x_t, t);
    EXPECT_LT((input - x_flow).abs().max().item<double>(), 1e-12) << "shift " << shift;
    // Other predictions see x_t itself.
    EXPECT_TRUE(torch::equal(dd::network_input(dd::Prediction::kV, schedule, x_t, t), x_t));
    const auto v = dd::training_target(dd::Prediction::kFlow, schedule, x0, eps, t);
    EXPECT_TRUE(torch::equal(v, eps - x0));
    // The exact velocity converts back to the exact eps, even at s = 1 (where x_t = eps).
    EXPECT_LT((dd::output_to_eps(dd::Prediction::kFlow, schedule, v, x_t, t) - eps).abs().max().item<double>(), 1e-12);
    // The shift keeps the endpoints and moves every interior level towards noise (shift > 1).
    if (shift > 1) {
      const auto plain = dd::make_schedule("flow", T);
      for (int64_t k : {0, 100, 500, 900}) EXPECT_LT(schedule.alpha_bar(k), plain.alpha_bar(k));
    }
  }
  EXPECT_EQ(dd::parse_prediction("flow"), dd::Prediction::kFlow);
  EXPECT_THROW(dd::make_schedule("flow", 10, false, 0.0), std::invalid_argument);
  EXPECT_THROW(dd::make_schedule("sigmoid", 10), std::invalid_argument);
}

TEST(Noise, AnImagesNoiseDependsOnlyOnItsSeed) {
  dd::PerImageNoise batch(seeds(3, 100)), single({102});
  auto a = batch.randn({3, 4, 4}, torch::kFloat32);
  auto b = single.randn({3, 4, 4}, torch::kFloat32);
  EXPECT_TRUE(torch::equal(a[2], b[0]));
  EXPECT_FALSE(torch::equal(a[0], a[1]));
}

TEST(Guidance, CombinesConditionalAndUnconditionalInOneForward) {
  auto s = dd::linear_schedule(10);
  int calls = 0;
  // Output depends on whether the row's tokens are the null condition.
  dd::Network net = [&](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& tokens) {
    ++calls;
    auto is_null = (tokens.sum(1) == 0).to(torch::kFloat32).view({-1, 1, 1, 1});
    return x * 0 + 2.0 * (1 - is_null) + 0.5 * is_null;
  };
  auto tokens = torch::ones({2, 4}, torch::kInt64), null_tokens = torch::zeros({2, 4}, torch::kInt64);
  auto x = torch::zeros({2, 1, 2, 2});
  auto t = torch::zeros({2}, torch::kInt64);
  auto guided = dd::guided_eps_model(net, tokens, null_tokens, 3.0, dd::Prediction::kEps, s);
  EXPECT_TRUE(torch::allclose(guided(x, t), torch::full_like(x, 0.5 + 3.0 * (2.0 - 0.5))));
  EXPECT_EQ(calls, 1);
  calls = 0;
  EXPECT_TRUE(torch::allclose(dd::guided_eps_model(net, tokens, null_tokens, 1.0, dd::Prediction::kEps, s)(x, t),
                              torch::full_like(x, 2.0)));
  EXPECT_TRUE(torch::allclose(dd::guided_eps_model(net, tokens, null_tokens, 0.0, dd::Prediction::kEps, s)(x, t),
                              torch::full_like(x, 0.5)));
  EXPECT_EQ(calls, 2);
}

TEST(Samplers, DdimEta0ConvergesToTheExactOdeMapAtFirstOrder) {
  auto s = dd::linear_schedule(1000);
  dd::PerImageNoise noise(seeds(64));
  auto xT = noise.randn({1, 4, 4}, torch::kFloat64);
  auto exact = exact_ode_map(xT, s.alphas_cumprod[999].item<double>());
  std::vector<double> errors;
  const std::vector<int64_t> steps = {10, 20, 40, 80};
  for (int64_t n : steps) {
    dd::PerImageNoise unused(seeds(64));
    auto x0 = dd::ddim_sample(gaussian_optimal_eps(s), xT.clone(), s, dd::sampling_timesteps(1000, n, "linspace"),
                              0.0, unused, false);
    errors.push_back((x0 - exact).abs().max().item<double>());
  }
  const double slope = std::log(errors.back() / errors.front()) / std::log(80.0 / 10.0);
  EXPECT_LT(slope, -0.8) << "errors " << errors[0] << " " << errors[3];
  EXPECT_GT(slope, -1.3);
  // All T steps: the discretisation error is small in absolute terms too.
  dd::PerImageNoise unused(seeds(64));
  auto fine = dd::ddim_sample(gaussian_optimal_eps(s), xT.clone(), s, dd::sampling_timesteps(1000, 1000, "linspace"),
                              0.0, unused, false);
  EXPECT_LT((fine - exact).abs().max().item<double>(), 0.01);
}

TEST(Samplers, DdpmOverAllStepsReproducesTheDataDistribution) {
  auto s = dd::linear_schedule(1000);
  const int64_t n = 2048;
  dd::PerImageNoise noise(seeds(n, 7));
  auto x = noise.randn({1, 2, 2}, torch::kFloat64);
  auto x0 = dd::ddpm_sample(gaussian_optimal_eps(s), x, s, dd::DdpmVariance::kPosterior, noise, false);
  const double count = static_cast<double>(x0.numel());
  EXPECT_NEAR(x0.mean().item<double>(), kMu, 5 * kS / std::sqrt(count));
  // Standard error of a sample variance: s^2 sqrt(2 / n).
  EXPECT_NEAR(x0.var().item<double>(), kS * kS, 5 * kS * kS * std::sqrt(2.0 / count));
}

TEST(Samplers, DdimEta1IsStochasticAndEta0IsNot) {
  auto s = dd::linear_schedule(100);
  auto run = [&](double eta, uint64_t base) {
    dd::PerImageNoise start(seeds(4)), noise(seeds(4, base));
    return dd::ddim_sample(gaussian_optimal_eps(s), start.randn({1, 2, 2}, torch::kFloat64), s,
                           dd::sampling_timesteps(100, 10, "trailing"), eta, noise, false);
  };
  EXPECT_TRUE(torch::equal(run(0.0, 1), run(0.0, 99)));
  EXPECT_FALSE(torch::equal(run(1.0, 1), run(1.0, 99)));
  EXPECT_THROW(run(1.5, 1), c10::Error);
}

// Min-SNR-γ: weighing each target's squared error by its weight gives min(SNR, γ)‖x0 − x̂0‖² for
// every target, checked through the targets' own conversions (training_target, output_to_eps), not
// the weight formula.
TEST(LossWeighting, MinSnrWeightsEveryTargetToTheClampedX0Loss) {
  torch::manual_seed(0);
  const auto schedule = dd::make_schedule("cosine", 1000);
  const auto t = torch::tensor({0, 10, 100, 400, 700, 999}, torch::kInt64);
  const int64_t B = t.size(0);
  auto x0 = torch::randn({B, 2, 4, 4}, torch::kFloat64);
  auto eps = torch::randn({B, 2, 4, 4}, torch::kFloat64);
  auto x_t = dd::q_sample(schedule, x0, t, eps);
  const double gamma = 5.0;
  const auto alpha_bar = schedule.alphas_cumprod.index_select(0, t);
  const auto snr = alpha_bar / (1 - alpha_bar);
  for (const auto prediction : {dd::Prediction::kEps, dd::Prediction::kV, dd::Prediction::kX0, dd::Prediction::kFlow}) {
    const auto target = dd::training_target(prediction, schedule, x0, eps, t);
    const auto output = target + 0.1 * torch::randn_like(target);  // an imperfect network
    const auto eps_hat = dd::output_to_eps(prediction, schedule, output, x_t, t);
    const auto a = alpha_bar.view({B, 1, 1, 1});
    const auto x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt();
    const auto x0_loss = (x0 - x0_hat).pow(2).mean({1, 2, 3});
    const auto target_loss = (output - target).pow(2).mean({1, 2, 3});
    const auto w = dd::loss_weights(dd::LossWeighting::kMinSnr, prediction, schedule, t, gamma).to(torch::kFloat64);
    const auto want = torch::clamp_max(snr, gamma) * x0_loss;
    EXPECT_TRUE(torch::allclose(w * target_loss, want, 1e-5, 1e-12)) << (w * target_loss) << want;
    EXPECT_TRUE(torch::equal(dd::loss_weights(dd::LossWeighting::kUniform, prediction, schedule, t, gamma),
                             torch::ones({B})));
  }
  EXPECT_THROW(dd::parse_loss_weighting("snr"), std::invalid_argument);
}

// Log-normal timesteps: each draw lands on the timestep whose σ_t = exp(−λ_t) is nearest to
// exp(mean + std·z) in log; the draws' ln σ have the asked mean and std.
TEST(LossWeighting, LognormalTimestepsFollowTheirNoiseLevels) {
  const auto schedule = dd::make_schedule("cosine", 1000);
  for (double z : {-2.0, -1.0, 0.0, 0.5, 1.5}) {
    const double log_sigma = -1.2 + 1.2 * z;
    const int64_t t = dd::lognormal_timestep(schedule, z, -1.2, 1.2);
    ASSERT_GT(t, 0);
    ASSERT_LT(t, 999);
    // No neighbour is nearer in ln σ = −λ.
    const double here = std::abs(-schedule.lambda(t) - log_sigma);
    EXPECT_LE(here, std::abs(-schedule.lambda(t - 1) - log_sigma));
    EXPECT_LE(here, std::abs(-schedule.lambda(t + 1) - log_sigma));
  }
  EXPECT_GT(dd::lognormal_timestep(schedule, 1.0, -1.2, 1.2), dd::lognormal_timestep(schedule, 0.0, -1.2, 1.2));
  torch::manual_seed(1);
  const auto z = torch::randn({4000}, torch::kFloat64);
  std::vector<double> log_sigmas;
  for (int64_t i = 0; i < z.size(0); ++i)
    log_sigmas.push_back(-schedule.lambda(dd::lognormal_timestep(schedule, z[i].item<double>(), -1.2, 1.2)));
  const auto ls = torch::tensor(log_sigmas);
  EXPECT_NEAR(ls.mean().item<double>(), -1.2, 0.06);
  EXPECT_NEAR(ls.std().item<double>(), 1.2, 0.06);
}

// Logit-normal timesteps (SD3): t = ceil(u T) - 1 for u = sigmoid(mean + std z), so u_t = (t + 1) / T is the grid
// point at or above u; the draws' logit(u_t) have about the asked mean and std.
TEST(LossWeighting, LogitNormalTimestepsFollowSd3sDensity) {
  const int64_t T = 1000;
  for (double z : {-3.0, -1.0, 0.0, 0.4, 2.5}) {
    const double u = 1 / (1 + std::exp(-(0.5 + 1.3 * z)));
    const int64_t t = dd::logit_normal_timestep(T, z, 0.5, 1.3);
    EXPECT_GE(static_cast<double>(t + 1) / T, u);
    EXPECT_LT(static_cast<double>(t) / T, u);
  }
  EXPECT_EQ(dd::logit_normal_timestep(T, -100, 0, 1), 0);
  EXPECT_EQ(dd::logit_normal_timestep(T, 100, 0, 1), T - 1);
  torch::manual_seed(3);
  const auto z = torch::randn({4000}, torch::kFloat64);
  std::vector<double> logits;
  for (int64_t i = 0; i < z.size(0); ++i) {
    const double u = static_cast<double>(dd::logit_normal_timestep(T, z[i].item<double>(), -0.4, 0.8) + 1) / T - 0.5 / T;
    logits.push_back(std::log(u / (1 - u)));
  }
  const auto l = torch::tensor(logits);
  EXPECT_NEAR(l.mean().item<double>(), -0.4, 0.04);
  EXPECT_NEAR(l.std().item<double>(), 0.8, 0.04);
}
