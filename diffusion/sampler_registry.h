// One entry point for every sampler in diffusion/samplers.h: a SamplerSpec names
// the sampler and its options, validate() rejects options the sampler does not
// take (nothing is silently ignored), and run_sampler() dispatches.
// Defines: SamplerSpec, sampler_names, validate, sampler_timesteps, sampler_nfe, run_sampler.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "diffusion/samplers.h"
#include "diffusion/schedule.h"

namespace difftrain::diffusion {

struct SamplerSpec {
  // ddpm | ddpm-naive | ddpm-respaced | ddim | dpm-solver-2 | dpm-solver-3 | dpm-solver++2m | euler | heun |
  // flow-euler | flow-heun
  std::string name;
  int64_t steps = 25;  // listed timesteps, 1..T; ignored by ddpm (always all T)
  double eta = 0.0;    // ddim only, in [0, 1]
  // leading | trailing | linspace | quadratic | logsnr | karras; empty = the sampler's default: trailing for
  // ddim/ddpm-* and flow-* (on the flow schedule: SD3's shifted uniform grid), logsnr for dpm-*, karras for
  // euler/heun. Not accepted by ddpm.
  std::string spacing;
  DdpmVariance variance = DdpmVariance::kPosterior;  // ddpm family only
  bool clip_x0 = false;                              // only samplers that form x0-hat (ddpm*, ddim, dpm-solver++2m)
};

std::vector<std::string> sampler_names();
std::vector<std::string> spacing_names();
// Whether the sampler forms x0-hat mid-run, so clip_x0 applies (throws for an unknown name).
bool supports_clip(const std::string& name);
// The evaluation default used by `sample`, the FID sweep and training-time FID: x0-hat clipped to [-1, 1]
// wherever the sampler forms it and `clip` (clip_by_default, diffusion/objective.h) says so; default
// spacing; eta only for ddim.
SamplerSpec evaluation_spec(const std::string& name, int64_t steps, double eta = 0.0, bool clip = true);

// Throws std::invalid_argument naming the option and its value.
void validate(const SamplerSpec& spec, const NoiseSchedule& schedule);

// The descending integer timesteps the sampler visits (all T for ddpm). Can be shorter than spec.steps.
std::vector<int64_t> sampler_timesteps(const SamplerSpec& spec, const NoiseSchedule& schedule);

// Network evaluations per image, counting the terminal step (guidance's doubling not counted):
// n listed timesteps -> n (ddpm*, ddim, dpm-solver++2m, euler, flow-euler), 2n - 1 (heun, flow-heun),
// 1 + sum over intervals of (1 + interior points) (dpm-solver-2/3: 2n - 1 and 3n - 2 without fallbacks).
int64_t sampler_nfe(const SamplerSpec& spec, const NoiseSchedule& schedule);

// Validates, then samples from x_T (B, C, H, W); returns x_0 in x_T's dtype.
torch::Tensor run_sampler(const SamplerSpec& spec, const EpsModel& model, torch::Tensor x_T,
                          const NoiseSchedule& schedule, PerImageNoise& noise,
                          const SamplerCallback& callback = nullptr);

}  // namespace difftrain::diffusion
