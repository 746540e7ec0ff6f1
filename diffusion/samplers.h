// Samplers: pure functions over one interface (k-diffusion style). Each takes
// an eps-model (guidance and parameterisation already applied), the starting
// noise x_T, the schedule, per-image noise and a callback, and returns x_0.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "diffusion/schedule.h"

namespace difftrain::diffusion {

// eps-hat(x_t, t): x_t (B, C, H, W), t (B) int64 -> (B, C, H, W).
using EpsModel = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;

struct SamplerStep {
  int64_t index;            // 0-based step number
  int64_t total;            // number of steps
  int64_t t;                // timestep being left
  const torch::Tensor& x;   // x after this step
  const torch::Tensor& x0;  // the model's prediction of x_0 at this step
};
using SamplerCallback = std::function<void(const SamplerStep&)>;

// One generator per image, so an image's noise depends only on its own seed,
// never on batch size, batch position or the number of ranks.
class PerImageNoise {
 public:
  explicit PerImageNoise(const std::vector<uint64_t>& seeds);
  torch::Tensor randn(const std::vector<int64_t>& image_shape, const torch::TensorOptions& options);  // (B, ...)

 private:
  std::vector<at::Generator> generators_;
};

enum class DdpmVariance { kPosterior /* beta-tilde_t */, kBeta /* beta_t */ };

// Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2), written via
// the posterior q(x_{t-1} | x_t, x0-hat) (eq. 6-7) so x0-hat can be clipped.
torch::Tensor ddpm_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          DdpmVariance variance, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback = nullptr);

// DDIM (Song et al. 2020, eq. 12 and 16) over a descending subsequence of timesteps:
// x_{t'} = sqrt(a') x0-hat + sqrt(1 - a' - sigma^2) eps-hat + sigma z,
// sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a'). eta = 0 is deterministic, eta = 1 DDPM-like.
torch::Tensor ddim_sample(const EpsModel& model, torch::Tensor x, const NoiseSchedule& schedule,
                          const std::vector<int64_t>& timesteps, double eta, PerImageNoise& noise, bool clip_x0,
                          const SamplerCallback& callback = nullptr);

}  // namespace difftrain::diffusion
