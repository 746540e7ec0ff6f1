// Every sampler of diffusion/sampler_registry.h against closed forms. For Gaussian
// data x0 ~ N(mu, s^2 I) the optimal eps-predictor is known, and the
// probability-flow ODE keeps the standardised value (x - sqrt(a) mu) / sqrt(a s^2 + 1 - a),
// so the exact ODE map between any two timesteps is known too. Order is measured
// at the LAST INTEGER TIMESTEP (t = 0), before the terminal x0-hat step, whose
// fixed error would otherwise floor the convergence curves.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffusion/guidance.h"
#include "diffusion/objective.h"
#include "diffusion/sampler_registry.h"
#include "diffusion/samplers.h"
#include "diffusion/schedule.h"

namespace dd = difftrain::diffusion;

namespace {

constexpr double kMu = 0.3, kS = 0.5;
constexpr int64_t kT = 1000;

// E[eps | x_t] for x0 ~ N(mu, s^2): sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). Counts its calls.
dd::EpsModel gaussian_optimal_eps(const dd::NoiseSchedule& schedule, int64_t* calls = nullptr) {
  return [schedule, calls](const torch::Tensor& x, const torch::Tensor& t) {
    if (calls) ++*calls;
    auto a = dd::gather_coefficient(schedule.alphas_cumprod, t, x);
    return (1 - a).sqrt() * (x - a.sqrt() * kMu) / (a * kS * kS + 1 - a);
  };
}

// The probability-flow ODE map from alpha_bar a_from to a_to (a_to = 1: to x_0).
torch::Tensor exact_ode_map(const torch::Tensor& x, double a_from, double a_to) {
  const double scale = std::sqrt((a_to * kS * kS + 1 - a_to) / (a_from * kS * kS + 1 - a_from));
  return std::sqrt(a_to) * kMu + scale * (x - std::sqrt(a_from) * kMu);
}

std::vector<uint64_t> seeds(int64_t n, uint64_t base = 0) {
  std::vector<uint64_t> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = base + i;
  return s;
}

torch::Tensor start_noise(int64_t n, uint64_t base = 0, torch::Dtype dtype = torch::kFloat64) {
  dd::PerImageNoise noise(seeds(n, base));
  return noise.randn({1, 2, 2}, dtype);
}

double max_abs(const torch::Tensor& a) { return a.abs().max().item<double>(); }

struct Result {
  torch::Tensor out;      // x_0 (after the terminal step)
  torch::Tensor at_last;  // x at the last listed timestep (undefined for a single timestep)
  int64_t calls = 0;      // network evaluations per image
};

Result run(const dd::SamplerSpec& spec, const dd::NoiseSchedule& schedule, const torch::Tensor& x_T,
           uint64_t noise_base = 1000) {
  Result r;
  dd::PerImageNoise noise(seeds(x_T.size(0), noise_base));
  r.out = dd::run_sampler(spec, gaussian_optimal_eps(schedule, &r.calls), x_T.clone(), schedule, noise,
                          [&](const dd::SamplerStep& step) {
                            if (step.index == step.total - 2) r.at_last = step.x.clone();
                          });
  return r;
}

dd::SamplerSpec spec_of(const std::string& name, int64_t steps, const std::string& spacing = "") {
  dd::SamplerSpec spec;
  spec.name = name;
  spec.steps = steps;
  spec.spacing = spacing;
  return spec;
}

// Least-squares slope of log(y) against log(x).
double loglog_slope(const std::vector<double>& x, const std::vector<double>& y) {
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += std::log(x[i]) / x.size(), my += std::log(y[i]) / y.size();
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (std::log(x[i]) - mx) * (std::log(y[i]) - my);
    sxx += (std::log(x[i]) - mx) * (std::log(x[i]) - mx);
  }
  return sxy / sxx;
}

template <typename F>
std::string invalid_argument_message(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no std::invalid_argument thrown)";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Order of convergence: error at t = 0 against the exact ODE map from t = T-1, over step counts that share both
// endpoints (T-1 and 0), as a log-log slope against NFE.

struct OrderCase {
  const char* label;
  const char* sampler;
  const char* schedule;
  const char* spacing;
  std::vector<int64_t> steps;
  double order;
};

void PrintTo(const OrderCase& c, std::ostream* os) { *os << c.sampler << " " << c.schedule << " " << c.spacing; }

class ConvergenceOrder : public ::testing::TestWithParam<OrderCase> {};

TEST_P(ConvergenceOrder, ErrorFallsAtTheSolversOrder) {
  const OrderCase& c = GetParam();
  const auto schedule = dd::make_schedule(c.schedule, kT);
  const auto x_T = start_noise(64);
  const auto exact = exact_ode_map(x_T, schedule.alpha_bar(kT - 1), schedule.alpha_bar(0));
  std::vector<double> nfe, err;
  std::string table;
  for (int64_t steps : c.steps) {
    const auto spec = spec_of(c.sampler, steps, c.spacing);
    const auto ts = dd::sampler_timesteps(spec, schedule);
    ASSERT_EQ(ts.front(), kT - 1);
    ASSERT_EQ(ts.back(), 0);
    const Result r = run(spec, schedule, x_T);
    nfe.push_back(static_cast<double>(r.calls));
    err.push_back(max_abs(r.at_last - exact));
    table += " " + std::to_string(r.calls) + ":" + std::to_string(err.back());
    if (err.size() > 1) EXPECT_LT(err.back(), err[err.size() - 2]) << "error did not fall at NFE " << r.calls;
  }
  const double slope = -loglog_slope(nfe, err);
  std::printf("[ order ] %-16s %-6s %-8s NFE %3.0f-%3.0f slope %.2f (expected %.0f)\n", c.sampler, c.schedule,
              c.spacing, nfe.front(), nfe.back(), slope, c.order);
  EXPECT_NEAR(slope, c.order, 0.4) << "NFE:error" << table;
}

INSTANTIATE_TEST_SUITE_P(
    Samplers, ConvergenceOrder,
    ::testing::Values(OrderCase{"ddim", "ddim", "linear", "linspace", {10, 15, 20, 30, 40, 60}, 1},
                      OrderCase{"euler", "euler", "linear", "karras", {10, 15, 20, 30, 40, 60}, 1},
                      OrderCase{"heun", "heun", "linear", "karras", {10, 12, 15, 20, 25, 30}, 2},
                      OrderCase{"dpm2", "dpm-solver-2", "linear", "logsnr", {10, 12, 15, 20, 25, 30}, 2},
                      OrderCase{"dpm3", "dpm-solver-3", "linear", "logsnr", {6, 8, 10, 12, 15}, 3},
                      OrderCase{"dpmpp2m", "dpm-solver++2m", "linear", "logsnr", {15, 20, 25, 30, 40, 60}, 2},
                      // Karras steps are far from uniform in lambda: this one checks the step-size ratio r_i.
                      OrderCase{"dpmpp2m_karras", "dpm-solver++2m", "linear", "karras", {20, 25, 30, 40, 60}, 2},
                      OrderCase{"dpmpp2m_cosine", "dpm-solver++2m", "cosine", "logsnr", {30, 40, 60, 80, 100}, 2},
                      // The rectified-flow ODE solvers on a VP model: the same ODE in other coordinates.
                      OrderCase{"flow_euler", "flow-euler", "linear", "linspace", {10, 15, 20, 30, 40, 60}, 1},
                      OrderCase{"flow_heun", "flow-heun", "linear", "linspace", {20, 25, 30, 40, 50, 60}, 2}),
    [](const ::testing::TestParamInfo<OrderCase>& info) { return std::string(info.param.label); });

// ---------------------------------------------------------------------------------------------------------------
// High NFE, terminal step included: the deterministic samplers land on the exact map to x_0.

TEST(Samplers, DeterministicSamplersLandOnTheExactMapAtHighNfe) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(64);
  const auto exact = exact_ode_map(x_T, schedule.alpha_bar(kT - 1), 1.0);
  struct Case {
    const char* name;
    int64_t steps;
    double tolerance;  // about twice the error measured with these settings
  };
  for (const Case& c :
       {Case{"ddim", 100, 0.07}, Case{"euler", 100, 0.07}, Case{"heun", 100, 4e-3}, Case{"dpm-solver-2", 100, 1e-3},
        Case{"dpm-solver-3", 30, 1e-3}, Case{"dpm-solver++2m", 100, 1.5e-3}}) {
    const Result r = run(spec_of(c.name, c.steps), schedule, x_T);
    const double err = max_abs(r.out - exact);
    std::printf("[ final ] %-16s steps %3ld NFE %3ld max |x0 - exact| %.2e\n", c.name, static_cast<long>(c.steps),
                static_cast<long>(r.calls), err);
    EXPECT_LT(err, c.tolerance) << c.name;
  }
}

TEST(Samplers, OdeSamplersAreDeterministic) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(16);
  for (const char* name : {"ddim", "dpm-solver-2", "dpm-solver-3", "dpm-solver++2m", "euler", "heun"}) {
    const auto spec = spec_of(name, 12);
    EXPECT_TRUE(torch::equal(run(spec, schedule, x_T, 1).out, run(spec, schedule, x_T, 2).out)) << name;
  }
  // The stochastic ones do use their noise.
  for (const char* name : {"ddpm-naive", "ddpm-respaced"}) {
    const auto spec = spec_of(name, 12);
    EXPECT_FALSE(torch::equal(run(spec, schedule, x_T, 1).out, run(spec, schedule, x_T, 2).out)) << name;
  }
}

TEST(Samplers, EulerIsDdimEta0) {
  // Karras et al. 2022, sec. 3: DDIM is the Euler method on this ODE; the same timesteps give the same x_0.
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(16);
  const auto euler = run(spec_of("euler", 20, "karras"), schedule, x_T).out;
  const auto ddim = run(spec_of("ddim", 20, "karras"), schedule, x_T).out;
  EXPECT_LT(max_abs(euler - ddim), 1e-10);
}

// ---------------------------------------------------------------------------------------------------------------
// The DDPM family.

TEST(Samplers, RespacedDdpmOverAllTimestepsIsFullDdpm) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(32);
  for (auto variance : {dd::DdpmVariance::kPosterior, dd::DdpmVariance::kBeta}) {
    auto full = spec_of("ddpm", 0);
    full.variance = variance;
    auto respaced = spec_of("ddpm-respaced", kT);
    respaced.variance = variance;
    const auto a = run(full, schedule, x_T, 5).out, b = run(respaced, schedule, x_T, 5).out;
    EXPECT_LT(max_abs(a - b), 1e-12);
    EXPECT_GT(max_abs(a - run(respaced, schedule, x_T, 6).out), 0.1);  // and the seeds do matter
  }
}

// The ancestral samplers are affine in x_T and their noise, so for Gaussian data their output moments follow a
// scalar recursion: with the optimal eps, x0-hat = p x + q, and a step x' = c0 x0-hat + ct x + sqrt(v) z maps
// (mean m, variance V) to ((c0 p + ct) m + c0 q, (c0 p + ct)^2 V + v), starting from N(0, 1).
struct Moments {
  double mean, var;
};

Moments ancestral_moments(const dd::NoiseSchedule& schedule, const std::vector<int64_t>& ts, bool naive,
                          dd::DdpmVariance variance) {
  double m = 0, V = 1;
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t t = ts[i];
    const double a = schedule.alpha_bar(t), alpha = std::sqrt(a), sigma = std::sqrt(1 - a);
    const double ce = sigma / (a * kS * kS + 1 - a);  // eps-hat = ce (x - alpha mu)
    const double p = (1 - sigma * ce) / alpha, q = sigma * ce * kMu;
    if (i + 1 == ts.size()) return {p * m + q, p * p * V};  // terminal step: x0-hat
    // respaced: the step t -> t_next with beta' from alpha_bar; naive: the one-step t -> t-1 with beta_t.
    const double a_prev = schedule.alpha_bar(naive ? t - 1 : ts[i + 1]);
    const double beta = 1 - a / a_prev;
    const double c0 = std::sqrt(a_prev) * beta / (1 - a), ct = std::sqrt(1 - beta) * (1 - a_prev) / (1 - a);
    const double v = variance == dd::DdpmVariance::kPosterior ? beta * (1 - a_prev) / (1 - a) : beta;
    const double k = c0 * p + ct;
    m = k * m + c0 * q;
    V = k * k * V + v;
  }
  return {m, V};
}

TEST(Samplers, SubsampledDdpmMatchesItsClosedFormMoments) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(2048, 7);
  const double count = static_cast<double>(x_T.numel());
  for (const char* name : {"ddpm-respaced", "ddpm-naive"}) {
    for (auto variance : {dd::DdpmVariance::kPosterior, dd::DdpmVariance::kBeta}) {
      auto spec = spec_of(name, 50);
      spec.variance = variance;
      const auto x0 = run(spec, schedule, x_T).out;
      const Moments want =
          ancestral_moments(schedule, dd::sampler_timesteps(spec, schedule), spec.name == "ddpm-naive", variance);
      std::printf("[ ddpm50 ] %-13s %-10s mean %.4f (closed form %.4f) var %.4f (closed form %.4f; data %.2f)\n", name,
                  variance == dd::DdpmVariance::kBeta ? "beta" : "beta-tilde", x0.mean().item<double>(), want.mean,
                  x0.var().item<double>(), want.var, kS * kS);
      EXPECT_NEAR(x0.mean().item<double>(), want.mean, 5 * std::sqrt(want.var / count)) << name;
      EXPECT_NEAR(x0.var().item<double>(), want.var, 5 * want.var * std::sqrt(2.0 / count)) << name;
    }
  }
}

TEST(Samplers, RespacedDdpmKeepsTheDataVarianceWhereNaiveSubsamplingLosesIt) {
  // Measured at 50 trailing steps (closed form): respaced 0.200 (beta-tilde) and 0.265 (beta); naive about 0.84
  // with the mean pulled from 0.3 to 0.05, against the data's 0.25.
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(2048, 7);
  for (auto variance : {dd::DdpmVariance::kPosterior, dd::DdpmVariance::kBeta}) {
    auto respaced = spec_of("ddpm-respaced", 50), naive = spec_of("ddpm-naive", 50);
    respaced.variance = naive.variance = variance;
    const auto r = run(respaced, schedule, x_T).out, v = run(naive, schedule, x_T).out;
    const double r_off = std::abs(r.var().item<double>() - kS * kS), v_off = v.var().item<double>() - kS * kS;
    EXPECT_LT(r_off, 0.06);
    EXPECT_GT(v_off, 2 * kS * kS);  // over-dispersed: most of the starting noise is still there
    EXPECT_GT(v_off, 8 * r_off);
    EXPECT_LT(v.mean().item<double>(), 0.5 * kMu);  // and the mean has not come out of the noise
  }
  // With every timestep kept the closed form comes within 2 % of the data's variance (0.2461: the plug-in x0-hat
  // still drops Var[x0 | x_t] from each step), 80 times closer than 50 naive steps.
  const Moments full =
      ancestral_moments(schedule, dd::sampling_timesteps(kT, kT, "trailing"), false, dd::DdpmVariance::kPosterior);
  EXPECT_NEAR(full.var, kS * kS, 0.005);
  EXPECT_NEAR(full.mean, kMu, 1e-3);
}

TEST(Samplers, DdimEta1IsRespacedDdpmWithPosteriorVariance) {
  // Song et al. 2020, eq. 16: eta = 1 makes the DDIM step the respaced DDPM posterior step; same seeds, same x_0.
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(64, 3);
  auto ddim = spec_of("ddim", 30);
  ddim.eta = 1.0;
  EXPECT_LT(max_abs(run(ddim, schedule, x_T, 9).out - run(spec_of("ddpm-respaced", 30), schedule, x_T, 9).out), 1e-10);
}

TEST(Samplers, ClipKeepsX0InTheDataRange) {
  // N(0.3, 0.5^2) puts about 8 % of its mass above 1, so unclipped samples do leave [-1, 1].
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(512, 3);
  for (const char* name : {"ddpm-naive", "ddpm-respaced", "ddim", "dpm-solver++2m"}) {
    auto spec = spec_of(name, 20);
    EXPECT_GT(max_abs(run(spec, schedule, x_T).out), 1.0) << name;
    spec.clip_x0 = true;
    EXPECT_LE(max_abs(run(spec, schedule, x_T).out), 1.0) << name;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The dispatcher: NFE bookkeeping, validation, dtypes, callbacks.

TEST(Registry, NfeMatchesTheNetworkCalls) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(2);
  bool saw_fallback = false;
  for (const auto& name : dd::sampler_names()) {
    for (int64_t steps : {1, 2, 7, 25, 200}) {
      for (const std::string spacing : {"", "leading", "linspace", "quadratic", "logsnr", "karras"}) {
        if (name == "ddpm" && (steps != 1 || !spacing.empty())) continue;
        const auto spec = spec_of(name, steps, spacing);
        const int64_t nfe = dd::sampler_nfe(spec, schedule);
        EXPECT_EQ(run(spec, schedule, x_T).calls, nfe) << name << " steps " << steps << " '" << spacing << "'";
        const auto n = static_cast<int64_t>(dd::sampler_timesteps(spec, schedule).size());
        if (name == "dpm-solver-3" && nfe < 3 * n - 2) saw_fallback = true;
      }
    }
  }
  EXPECT_EQ(dd::sampler_nfe(spec_of("ddpm", 25), schedule), kT);
  EXPECT_EQ(dd::sampler_nfe(spec_of("heun", 10, "linspace"), schedule), 19);
  EXPECT_EQ(dd::sampler_nfe(spec_of("dpm-solver-2", 10, "linspace"), schedule), 19);
  EXPECT_EQ(dd::sampler_nfe(spec_of("dpm-solver-3", 10, "linspace"), schedule), 28);
  EXPECT_TRUE(saw_fallback) << "no case exercised the lower-order fallback";
}

TEST(Registry, ValidateNamesTheBadOption) {
  const auto schedule = dd::linear_schedule(100);
  auto message = [&](dd::SamplerSpec spec) { return invalid_argument_message([&] { dd::validate(spec, schedule); }); };
  auto with = [](dd::SamplerSpec spec, auto edit) {
    edit(spec);
    return spec;
  };
  EXPECT_NE(message(spec_of("plms", 10)).find("name = 'plms'"), std::string::npos);
  EXPECT_NE(message(with(spec_of("ddim", 10), [](auto& s) { s.eta = 1.5; })).find("eta = 1.5"), std::string::npos);
  EXPECT_NE(message(with(spec_of("ddim", 10), [](auto& s) { s.eta = -0.1; })).find("eta = -0.1"), std::string::npos);
  EXPECT_NE(message(with(spec_of("euler", 10), [](auto& s) { s.eta = 0.5; })).find("eta = 0.5"), std::string::npos);
  for (const char* name : {"dpm-solver-2", "dpm-solver-3", "euler", "heun"})
    EXPECT_NE(message(with(spec_of(name, 10), [](auto& s) { s.clip_x0 = true; })).find("clip_x0"), std::string::npos)
        << name;
  EXPECT_NE(message(with(spec_of("heun", 10), [](auto& s) { s.variance = dd::DdpmVariance::kBeta; })).find("variance"),
            std::string::npos);
  EXPECT_NE(message(spec_of("ddim", 0)).find("steps = 0"), std::string::npos);
  EXPECT_NE(message(spec_of("ddim", 101)).find("steps = 101"), std::string::npos);
  EXPECT_NE(message(spec_of("ddim", 10, "sideways")).find("spacing = 'sideways'"), std::string::npos);
  EXPECT_NE(message(spec_of("ddpm", 10, "trailing")).find("spacing"), std::string::npos);
  // Everything the table allows passes.
  for (const auto& name : dd::sampler_names()) {
    EXPECT_NO_THROW(dd::validate(spec_of(name, 10), schedule)) << name;
    for (const auto& spacing : dd::spacing_names())
      if (name != "ddpm") EXPECT_NO_THROW(dd::validate(spec_of(name, 10, spacing), schedule)) << name << spacing;
  }
  for (const char* name : {"ddpm", "ddpm-naive", "ddpm-respaced", "ddim", "dpm-solver++2m"})
    EXPECT_NO_THROW(dd::validate(with(spec_of(name, 10), [](auto& s) { s.clip_x0 = true; }), schedule)) << name;
  EXPECT_NO_THROW(dd::validate(with(spec_of("ddim", 10), [](auto& s) { s.eta = 1.0; }), schedule));
  // run_sampler validates too.
  dd::PerImageNoise noise(seeds(1));
  EXPECT_THROW(dd::run_sampler(spec_of("nope", 10), gaussian_optimal_eps(schedule), start_noise(1), schedule, noise),
               std::invalid_argument);
}

TEST(Registry, DefaultSpacings) {
  const auto schedule = dd::linear_schedule(kT);
  EXPECT_EQ(dd::sampler_timesteps(spec_of("ddim", 10), schedule), dd::sampling_timesteps(kT, 10, "trailing"));
  EXPECT_EQ(dd::sampler_timesteps(spec_of("ddpm-naive", 10), schedule), dd::sampling_timesteps(kT, 10, "trailing"));
  EXPECT_EQ(dd::sampler_timesteps(spec_of("dpm-solver-3", 10), schedule),
            dd::sampling_timesteps(schedule, 10, "logsnr"));
  EXPECT_EQ(dd::sampler_timesteps(spec_of("heun", 10), schedule), dd::sampling_timesteps(schedule, 10, "karras"));
  EXPECT_EQ(dd::sampler_timesteps(spec_of("ddpm", 10), schedule).size(), static_cast<size_t>(kT));
}

TEST(Registry, Float32RunsAndAgreesWithFloat64) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x64 = start_noise(8), x32 = start_noise(8, 0, torch::kFloat32);
  for (const auto& name : dd::sampler_names()) {
    const auto spec = spec_of(name, 20);
    const auto a = run(spec, schedule, x64).out, b = run(spec, schedule, x32).out;
    EXPECT_EQ(b.scalar_type(), torch::kFloat32) << name;
    EXPECT_LT(max_abs(a - b.to(torch::kFloat64)), 1e-3) << name;
  }
}

TEST(Registry, CallbackReportsEveryTimestepAndEndsOnTheOutput) {
  const auto schedule = dd::linear_schedule(kT);
  const auto x_T = start_noise(4);
  for (const auto& name : dd::sampler_names()) {
    const auto spec = spec_of(name, 9, name == "ddpm" ? "" : "linspace");
    const auto ts = dd::sampler_timesteps(spec, schedule);
    std::vector<int64_t> seen;
    torch::Tensor last;
    dd::PerImageNoise noise(seeds(4, 50));
    auto out = dd::run_sampler(spec, gaussian_optimal_eps(schedule), x_T.clone(), schedule, noise,
                               [&](const dd::SamplerStep& s) {
                                 EXPECT_EQ(s.index, static_cast<int64_t>(seen.size()));
                                 EXPECT_EQ(s.total, static_cast<int64_t>(ts.size()));
                                 seen.push_back(s.t);
                                 last = s.x.clone();
                               });
    EXPECT_EQ(seen, ts) << name;
    EXPECT_TRUE(torch::equal(out, last)) << name;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Spacings and DPM-Solver's intermediate timesteps.

TEST(Spacing, QuadraticMatchesTheDdimRepo) {
  // (numpy.linspace(0, sqrt(0.8 T), 10) ** 2).astype(int), reversed.
  EXPECT_EQ(dd::sampling_timesteps(kT, 10, "quadratic"),
            (std::vector<int64_t>{800, 632, 483, 355, 246, 158, 88, 39, 9, 0}));
  EXPECT_EQ(dd::sampling_timesteps(kT, 50, "quadratic").size(), 49u);  // 0 and 0.33 both truncate to 0
}

TEST(Spacing, LogSnrAndKarrasSpanTheScheduleAndRoundToNearest) {
  for (const char* name : {"linear", "cosine"}) {
    const auto schedule = dd::make_schedule(name, kT);
    for (const char* spacing : {"logsnr", "karras"}) {
      for (int64_t steps : {2, 10, 50}) {
        const auto ts = dd::sampling_timesteps(schedule, steps, spacing);
        EXPECT_EQ(ts.front(), kT - 1);
        EXPECT_EQ(ts.back(), 0);
        EXPECT_LE(static_cast<int64_t>(ts.size()), steps);
        for (size_t i = 1; i < ts.size(); ++i) EXPECT_LT(ts[i], ts[i - 1]);
      }
      EXPECT_THROW(dd::sampling_timesteps(kT, 10, spacing), std::invalid_argument);  // needs the schedule
    }
  }
  // Each timestep is the nearest in lambda to its point of the uniform lambda grid.
  const auto schedule = dd::linear_schedule(kT);
  const auto ts = dd::sampling_timesteps(schedule, 10, "logsnr");
  ASSERT_EQ(ts.size(), 10u);
  const double l0 = schedule.lambda(kT - 1), h = (schedule.lambda(0) - l0) / 9;
  for (size_t i = 0; i < ts.size(); ++i) {
    const double target = l0 + h * static_cast<double>(i);
    for (int64_t other : {ts[i] - 1, ts[i] + 1})
      if (other >= 0 && other < kT)
        EXPECT_LE(std::abs(schedule.lambda(ts[i]) - target), std::abs(schedule.lambda(other) - target));
  }
  // Rounding merges neighbours: fewer than asked for.
  EXPECT_LT(dd::sampling_timesteps(dd::linear_schedule(kT), 1000, "logsnr").size(), 1000u);
}

TEST(Spacing, NearestTimestepForLambdaIsTheBruteForceNearest) {
  const auto schedule = dd::cosine_schedule(200);
  for (double target : {-20.0, -3.3, -0.2, 0.0, 1.7, 4.9, 30.0}) {
    for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, 199}, {20, 60}, {5, 5}}) {
      int64_t best = lo;
      for (int64_t t = lo; t <= hi; ++t)
        if (std::abs(schedule.lambda(t) - target) < std::abs(schedule.lambda(best) - target)) best = t;
      EXPECT_EQ(dd::nearest_timestep_for_lambda(schedule, target, lo, hi), best) << target << " " << lo << " " << hi;
    }
  }
}

TEST(Spacing, DpmSolverIntermediatesAreStrictlyInsideAndFallBack) {
  const auto schedule = dd::linear_schedule(kT);
  EXPECT_TRUE(dd::dpm_solver_intermediate_timesteps(schedule, 5, 4, 2).empty());
  EXPECT_TRUE(dd::dpm_solver_intermediate_timesteps(schedule, 5, 4, 3).empty());
  EXPECT_EQ(dd::dpm_solver_intermediate_timesteps(schedule, 6, 4, 2), (std::vector<int64_t>{5}));
  EXPECT_EQ(dd::dpm_solver_intermediate_timesteps(schedule, 6, 4, 3), (std::vector<int64_t>{5}));  // order 2
  EXPECT_EQ(dd::dpm_solver_intermediate_timesteps(schedule, 7, 4, 3), (std::vector<int64_t>{6, 5}));
  // A wide interval: the points sit at the lambda fractions 1/2 and 1/3, 2/3 up to one timestep.
  const int64_t t = 900, t_next = 300;
  const double l = schedule.lambda(t), h = schedule.lambda(t_next) - l;
  const auto two = dd::dpm_solver_intermediate_timesteps(schedule, t, t_next, 2);
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(two[0], dd::nearest_timestep_for_lambda(schedule, l + h / 2, t_next + 1, t - 1));
  const auto three = dd::dpm_solver_intermediate_timesteps(schedule, t, t_next, 3);
  ASSERT_EQ(three.size(), 2u);
  EXPECT_NEAR((schedule.lambda(three[0]) - l) / h, 1.0 / 3, 0.01);
  EXPECT_NEAR((schedule.lambda(three[1]) - l) / h, 2.0 / 3, 0.01);
  EXPECT_GT(three[0], three[1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Zero terminal SNR (Lin et al. 2023): alpha_bar_{T-1} = 0, so x_{T-1} is pure noise and the exact ODE map from it
// to x_0 is mu + s x_{T-1}. The network is the optimal x0-predictor of the schedule it was trained on (at T-1:
// E[x0] = mu, as a v-model gives), its output converted to eps with the schedule sampling reads (alpha_bar_{T-1}
// tiny, diffusion/schedule.h), as eval/denoiser_source does. Every sampler must start at T-1 and land on the map.

namespace {
dd::EpsModel gaussian_optimal_x0_as_eps(const dd::NoiseSchedule& trained, const dd::NoiseSchedule& sampled) {
  return [trained, sampled](const torch::Tensor& x, const torch::Tensor& t) {
    auto a = dd::gather_coefficient(trained.alphas_cumprod, t, x);
    auto x0 = kMu + a.sqrt() * kS * kS * (x - a.sqrt() * kMu) / (a * kS * kS + 1 - a);
    auto a_s = dd::gather_coefficient(sampled.alphas_cumprod, t, x);
    return (x - a_s.sqrt() * x0) / (1 - a_s).sqrt();
  };
}
}  // namespace

TEST(ZeroTerminalSnr, EverySamplerStartsFromPureNoiseAndLandsOnTheExactMap) {
  for (const char* name : {"linear", "cosine"}) {
    const auto trained = dd::make_schedule(name, kT, /*zero_terminal_snr=*/true);
    ASSERT_EQ(trained.alpha_bar(kT - 1), 0.0);
    const auto sampled = dd::with_finite_terminal_snr(trained);
    EXPECT_GT(sampled.alpha_bar(kT - 1), 0.0);
    EXPECT_LT(sampled.alpha_bar(kT - 1), sampled.alpha_bar(kT - 2));
    EXPECT_TRUE(std::isfinite(sampled.lambda(kT - 1)));
    const auto model = gaussian_optimal_x0_as_eps(trained, sampled);
    const auto x_T = start_noise(64);
    const auto exact = kMu + kS * x_T;
    struct Case {
      const char* sampler;
      const char* spacing;
      int64_t steps;
      double order;  // the error at 2 x steps must fall by at least 0.7 x 2^order: it converges to the map
                     // (0: only the error at 2 x steps is bounded; trailing steps are not nested, so their
                     // error need not fall monotonically)
    };
    for (const Case& c : {Case{"ddim", "", 50, 1}, Case{"euler", "", 50, 1}, Case{"heun", "", 25, 2},
                          Case{"dpm-solver-2", "", 25, 2}, Case{"dpm-solver-3", "", 10, 3},
                          Case{"dpm-solver++2m", "", 25, 2}, Case{"dpm-solver++2m", "trailing", 25, 0},
                          Case{"ddim", "linspace", 50, 1}}) {
      double previous = 0;
      for (int64_t steps : {c.steps, 2 * c.steps}) {
        const auto spec = spec_of(c.sampler, steps, c.spacing);
        ASSERT_EQ(dd::sampler_timesteps(spec, trained).front(), kT - 1) << c.sampler << " " << c.spacing;
        dd::PerImageNoise noise(seeds(64, 1000));
        const auto out = dd::run_sampler(spec, model, x_T.clone(), trained, noise);
        ASSERT_TRUE(torch::isfinite(out).all().item<bool>()) << name << " " << c.sampler;
        const double err = max_abs(out - exact);
        std::printf("[ zero-terminal-snr %s ] %-16s %-9s steps %3ld max |x0 - (mu + s x_T)| %.2e\n", name, c.sampler,
                    c.spacing, static_cast<long>(steps), err);
        if (steps == 2 * c.steps) EXPECT_LT(err, c.order == 0 ? 5e-3 : 0.1) << name << " " << c.sampler << " " << c.spacing;
        if (previous > 0 && c.order > 0)
          EXPECT_LT(err, previous / (0.7 * std::pow(2.0, c.order))) << name << " " << c.sampler << " " << c.spacing;
        previous = err;
      }
    }
    // The stochastic ones: the data's mean and std from pure noise (few large ancestral steps shrink the
    // variance, as without zero terminal SNR: x0-hat is a posterior mean, so 250 steps).
    const auto many = start_noise(512, 77);
    for (const Case& c : {Case{"ddpm", "", kT, 0}, Case{"ddim", "", 250, 0}, Case{"ddpm-respaced", "", 250, 0}}) {
      auto spec = spec_of(c.sampler, c.steps, c.spacing);
      if (std::string(c.sampler) == "ddim") spec.eta = 1.0;
      dd::PerImageNoise noise(seeds(512, 5000));
      const auto out = dd::run_sampler(spec, model, many.clone(), trained, noise);
      const double mean = out.mean().item<double>(), std = out.std().item<double>();
      std::printf("[ zero-terminal-snr %s ] %-16s mean %.4f (mu %.2f) std %.4f (s %.2f)\n", name, c.sampler, mean, kMu,
                  std, kS);
      EXPECT_NEAR(mean, kMu, 0.04) << name << " " << c.sampler;  // 2048 values: standard error 0.011
      EXPECT_NEAR(std, kS, 0.04) << name << " " << c.sampler;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Rectified flow (Esser et al. 2024): x_flow = (1 - s) x0 + s eps. For x0 ~ N(mu, k^2) the optimal velocity is
// E[eps | x_flow] - E[x0 | x_flow] with
//   E[x0 | x] = mu + (1 - s) k^2 (x - (1 - s) mu) / D,  E[eps | x] = s (x - (1 - s) mu) / D,  D = (1 - s)^2 k^2 + s^2,
// and the flow ODE keeps (x - (1 - s) mu) / sqrt(D), so its exact map to x0 is mu + k (x - (1 - s) mu) / sqrt(D).
// The network below is written in flow coordinates alone (s from SD3's formula), and reaches the samplers
// the way a trained flow model does: guided_eps_model with Prediction::kFlow (network_input, output_to_eps).

namespace {
double sd3_sigma(int64_t t, double shift) {
  const double u = static_cast<double>(t + 1) / kT;
  return shift * u / (1 + (shift - 1) * u);
}

// The optimal flow network; `sigma_of(t)` is the noise level it believes timestep t has.
dd::Network gaussian_flow_network(std::function<double(int64_t)> sigma_of) {
  return [sigma_of](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
    std::vector<double> sig;
    for (int64_t i = 0; i < t.size(0); ++i) sig.push_back(sigma_of(t[i].item<int64_t>()));
    const auto s = torch::tensor(sig, x.options()).view({-1, 1, 1, 1});
    const auto d = (1 - s).pow(2) * kS * kS + s.pow(2);
    const auto centred = x - (1 - s) * kMu;
    return s * centred / d - (kMu + (1 - s) * kS * kS * centred / d);
  };
}

dd::EpsModel as_flow_model(const dd::Network& network, const dd::NoiseSchedule& sampled) {
  const auto tokens = torch::zeros({1, 1}, torch::kInt64);
  return [=](const torch::Tensor& x, const torch::Tensor& t) {
    return dd::guided_eps_model(network, tokens.expand({x.size(0), 1}), tokens.expand({x.size(0), 1}), 1.0,
                                dd::Prediction::kFlow, sampled)(x, t);
  };
}
}  // namespace

TEST(RectifiedFlow, FlowEulerIsDdimOnTheSameTimesteps) {
  // Both move along the line through x0-hat and eps-hat; only the coordinates differ.
  const auto x_T = start_noise(16);
  for (const auto& schedule : {dd::linear_schedule(kT), dd::make_schedule("flow", kT, false, 3.0)}) {
    const auto model = gaussian_optimal_eps(dd::with_finite_terminal_snr(schedule));
    for (const char* spacing : {"trailing", "linspace"}) {
      dd::PerImageNoise n1(seeds(16)), n2(seeds(16));
      const auto flow = dd::run_sampler(spec_of("flow-euler", 12, spacing), model, x_T.clone(), schedule, n1);
      const auto ddim = dd::run_sampler(spec_of("ddim", 12, spacing), model, x_T.clone(), schedule, n2);
      EXPECT_LT(max_abs(flow - ddim), 1e-9) << spacing;
    }
  }
  // The default spacing is trailing: on the flow schedule, SD3's shifted uniform grid from pure noise.
  const auto flow = dd::make_schedule("flow", kT, false, 3.0);
  const auto ts = dd::sampler_timesteps(spec_of("flow-heun", 10), flow);
  ASSERT_EQ(ts.size(), 10u);
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(ts[i], kT - 1 - static_cast<int64_t>(i) * 100);
  EXPECT_EQ(dd::sampler_nfe(spec_of("flow-heun", 10), flow), 19);
  EXPECT_EQ(dd::sampler_nfe(spec_of("flow-euler", 10), flow), 10);
}

TEST(RectifiedFlow, EulerAndHeunLandOnTheExactMapAtTheirOrders) {
  for (const double shift : {1.0, 3.0}) {
    const auto trained = dd::make_schedule("flow", kT, false, shift);
    const auto sampled = dd::with_finite_terminal_snr(trained);
    const auto x_T = start_noise(64);
    // The network of the schedule sampling reads (s_{T-1} just below 1), so the exact map starts there.
    const auto model = as_flow_model(
        gaussian_flow_network([&](int64_t t) { return dd::flow_sigma(sampled.alpha_bar(t)); }), sampled);
    const double s0 = dd::flow_sigma(sampled.alpha_bar(kT - 1));
    const double c0 = dd::flow_input_scale(sampled.alpha_bar(kT - 1));
    const auto exact = kMu + kS * (c0 * x_T - (1 - s0) * kMu) / std::sqrt((1 - s0) * (1 - s0) * kS * kS + s0 * s0);
    for (const auto& [name, order] : {std::pair<const char*, double>{"flow-euler", 1}, {"flow-heun", 2}}) {
      std::vector<double> errs;
      for (int64_t steps : {10, 20, 40}) {
        dd::PerImageNoise noise(seeds(64));
        const auto out = dd::run_sampler(spec_of(name, steps), model, x_T.clone(), trained, noise);
        errs.push_back(max_abs(out - exact));
        std::printf("[ rectified flow shift %.0f ] %-10s steps %2ld max |x0 - exact| %.2e\n", shift, name,
                    static_cast<long>(steps), errs.back());
      }
      for (size_t i = 1; i < errs.size(); ++i)
        EXPECT_LT(errs[i], errs[i - 1] / (0.7 * std::pow(2.0, order))) << name << " shift " << shift;
      // At 40 steps: the terminal Euler step from s ~ 1/40 (shift 1) or 3/40 (shift 3) to 0 sets the floor.
      EXPECT_LT(errs.back(), order == 1 ? 0.1 : 0.02) << name << " shift " << shift;
    }
    // The network trained on s_{T-1} = 1 exactly (what training shows it): the first step's tiny mismatch moves
    // x0 by far less than a pixel level (1/127.5).
    const auto trained_model = as_flow_model(gaussian_flow_network([&](int64_t t) { return sd3_sigma(t, shift); }),
                                             sampled);
    dd::PerImageNoise n1(seeds(64)), n2(seeds(64));
    const auto as_trained = dd::run_sampler(spec_of("flow-heun", 40), trained_model, x_T.clone(), trained, n1);
    const auto as_sampled = dd::run_sampler(spec_of("flow-heun", 40), model, x_T.clone(), trained, n2);
    EXPECT_LT(max_abs(as_trained - as_sampled), 2e-3) << "shift " << shift;
    // The DDPM family runs on the same flow model and converges to the same map.
    for (const char* other : {"ddim", "dpm-solver++2m", "heun"}) {
      double previous = 0;
      for (int64_t steps : {20, 40}) {
        dd::PerImageNoise n(seeds(64));
        const double err = max_abs(dd::run_sampler(spec_of(other, steps), model, x_T.clone(), trained, n) - exact);
        if (previous > 0) EXPECT_LT(err, previous / 1.4) << other << " shift " << shift;
        previous = err;
      }
      EXPECT_LT(previous, 0.1) << other << " shift " << shift;
    }
  }
}

TEST(Registry, EvaluationSpecClipsWhereTheModelCallsForIt) {
  EXPECT_TRUE(dd::evaluation_spec("ddim", 10).clip_x0);  // guided-diffusion's clip_denoised
  EXPECT_FALSE(dd::evaluation_spec("ddim", 10, 0.0, /*clip=*/false).clip_x0);
  EXPECT_FALSE(dd::evaluation_spec("flow-euler", 10).clip_x0);  // never forms x0-hat mid-run as an output
  // Pixels always; latents only for eps-prediction, whose x0-hat is amplified by 1/sqrt(alpha_bar).
  for (auto p : {dd::Prediction::kEps, dd::Prediction::kV, dd::Prediction::kX0, dd::Prediction::kFlow})
    EXPECT_TRUE(dd::clip_by_default(p, /*latent_data=*/false));
  EXPECT_TRUE(dd::clip_by_default(dd::Prediction::kEps, true));
  for (auto p : {dd::Prediction::kV, dd::Prediction::kX0, dd::Prediction::kFlow}) EXPECT_FALSE(dd::clip_by_default(p, true));
}
