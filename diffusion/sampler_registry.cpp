#include "diffusion/sampler_registry.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace difftrain::diffusion {

namespace {

// What each sampler takes. The one table validate(), the defaults and the docs follow.
struct SamplerInfo {
  const char* name;
  const char* default_spacing;  // "" for ddpm: no spacing, all T steps
  bool takes_eta;
  bool takes_variance;
  bool takes_clip;
};

constexpr SamplerInfo kSamplers[] = {
    {"ddpm", "", false, true, true},
    {"ddpm-naive", "trailing", false, true, true},
    {"ddpm-respaced", "trailing", false, true, true},
    {"ddim", "trailing", true, false, true},
    {"dpm-solver-2", "logsnr", false, false, false},
    {"dpm-solver-3", "logsnr", false, false, false},
    {"dpm-solver++2m", "logsnr", false, false, true},
    {"euler", "karras", false, false, false},
    {"heun", "karras", false, false, false},
    {"flow-euler", "trailing", false, false, false},
    {"flow-heun", "trailing", false, false, false},
};

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

const SamplerInfo& info_of(const std::string& name) {
  for (const auto& s : kSamplers)
    if (name == s.name) return s;
  throw std::invalid_argument("sampler name = '" + name + "': expected one of " + joined(sampler_names()));
}

[[noreturn]] void reject(const std::string& option, const std::string& value, const std::string& why) {
  throw std::invalid_argument("sampler " + option + " = " + value + ": " + why);
}

std::string spacing_of(const SamplerSpec& spec) {
  return spec.spacing.empty() ? info_of(spec.name).default_spacing : spec.spacing;
}

}  // namespace

std::vector<std::string> sampler_names() {
  std::vector<std::string> names;
  for (const auto& s : kSamplers) names.emplace_back(s.name);
  return names;
}

bool supports_clip(const std::string& name) { return info_of(name).takes_clip; }

SamplerSpec evaluation_spec(const std::string& name, int64_t steps, double eta, bool clip) {
  SamplerSpec spec;
  spec.name = name;
  spec.steps = steps;
  spec.eta = info_of(name).takes_eta ? eta : 0.0;
  spec.clip_x0 = clip && supports_clip(name);
  return spec;
}

std::vector<std::string> spacing_names() {
  return {"leading", "trailing", "linspace", "quadratic", "logsnr", "karras"};
}

void validate(const SamplerSpec& spec, const NoiseSchedule& schedule) {
  const SamplerInfo& info = info_of(spec.name);
  std::ostringstream eta;
  eta << spec.eta;
  if (info.takes_eta && !(spec.eta >= 0 && spec.eta <= 1)) reject("eta", eta.str(), "expected a value in [0, 1]");
  if (!info.takes_eta && spec.eta != 0) reject("eta", eta.str(), "only ddim takes eta");
  if (!info.takes_variance && spec.variance != DdpmVariance::kPosterior)
    reject("variance", "beta", "only the ddpm family takes a variance choice");
  if (!info.takes_clip && spec.clip_x0)
    reject("clip_x0", "true", spec.name + " never forms x0-hat mid-run (clip with ddpm*, ddim or dpm-solver++2m)");
  if (spec.name == "ddpm") {
    if (!spec.spacing.empty()) reject("spacing", "'" + spec.spacing + "'", "ddpm runs all T steps");
    return;
  }
  const auto spacings = spacing_names();
  if (!spec.spacing.empty() && std::find(spacings.begin(), spacings.end(), spec.spacing) == spacings.end())
    reject("spacing", "'" + spec.spacing + "'", "expected one of " + joined(spacings));
  if (spec.steps < 1 || spec.steps > schedule.timesteps)
    reject("steps", std::to_string(spec.steps), "expected 1.." + std::to_string(schedule.timesteps));
}

std::vector<int64_t> sampler_timesteps(const SamplerSpec& spec, const NoiseSchedule& given) {
  validate(spec, given);
  const NoiseSchedule schedule = with_finite_terminal_snr(given);  // logsnr and karras spacings read lambda_{T-1}
  if (spec.name == "ddpm") {
    std::vector<int64_t> all(schedule.timesteps);
    for (int64_t i = 0; i < schedule.timesteps; ++i) all[i] = schedule.timesteps - 1 - i;
    return all;
  }
  return sampling_timesteps(schedule, spec.steps, spacing_of(spec));
}

int64_t sampler_nfe(const SamplerSpec& spec, const NoiseSchedule& given) {
  const NoiseSchedule schedule = with_finite_terminal_snr(given);
  const auto ts = sampler_timesteps(spec, schedule);
  const auto n = static_cast<int64_t>(ts.size());
  if (spec.name == "heun" || spec.name == "flow-heun") return 2 * n - 1;
  if (spec.name == "dpm-solver-2" || spec.name == "dpm-solver-3") {
    const int order = spec.name == "dpm-solver-2" ? 2 : 3;
    int64_t nfe = 1;  // the terminal step
    for (int64_t i = 0; i + 1 < n; ++i)
      nfe += 1 + static_cast<int64_t>(dpm_solver_intermediate_timesteps(schedule, ts[i], ts[i + 1], order).size());
    return nfe;
  }
  return n;
}

torch::Tensor run_sampler(const SamplerSpec& spec, const EpsModel& model, torch::Tensor x_T,
                          const NoiseSchedule& given, PerImageNoise& noise, const SamplerCallback& callback) {
  // A zero-terminal-SNR schedule (alpha_bar_{T-1} = 0) is sampled with a tiny finite alpha_bar_{T-1}:
  // every sampler divides by sqrt(alpha_bar) or takes lambda = log(alpha / sigma) (diffusion/schedule.h).
  const NoiseSchedule schedule = with_finite_terminal_snr(given);
  const auto ts = sampler_timesteps(spec, schedule);  // validates
  const auto& n = spec.name;
  if (n == "ddpm") return ddpm_sample(model, std::move(x_T), schedule, spec.variance, noise, spec.clip_x0, callback);
  if (n == "ddpm-naive")
    return ddpm_naive_sample(model, std::move(x_T), schedule, ts, spec.variance, noise, spec.clip_x0, callback);
  if (n == "ddpm-respaced")
    return ddpm_respaced_sample(model, std::move(x_T), schedule, ts, spec.variance, noise, spec.clip_x0, callback);
  if (n == "ddim") return ddim_sample(model, std::move(x_T), schedule, ts, spec.eta, noise, spec.clip_x0, callback);
  if (n == "dpm-solver-2") return dpm_solver_2_sample(model, std::move(x_T), schedule, ts, callback);
  if (n == "dpm-solver-3") return dpm_solver_3_sample(model, std::move(x_T), schedule, ts, callback);
  if (n == "dpm-solver++2m")
    return dpm_solver_pp_2m_sample(model, std::move(x_T), schedule, ts, spec.clip_x0, callback);
  if (n == "euler") return euler_sample(model, std::move(x_T), schedule, ts, callback);
  if (n == "flow-euler") return flow_euler_sample(model, std::move(x_T), schedule, ts, callback);
  if (n == "flow-heun") return flow_heun_sample(model, std::move(x_T), schedule, ts, callback);
  return heun_sample(model, std::move(x_T), schedule, ts, callback);  // validate() admits no other name
}

}  // namespace difftrain::diffusion
