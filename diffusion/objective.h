// What the network predicts and how its output converts to the quantities the
// samplers use. eps-prediction: Ho et al. 2020 (eq. 14, "L_simple");
// v-prediction: Salimans & Ho 2022 (sec. 4), v = sqrt(a) eps - sqrt(1 - a) x0.
// x0-prediction: the clean image itself (Ho et al. 2020, sec. 3.2 discuss it as an alternative;
// the target Min-SNR-γ's weighting is defined on, Hang et al. 2023, eq. 8).
#pragma once

#include <torch/types.h>

#include <string>

#include "diffusion/schedule.h"

namespace difftrain::diffusion {

enum class Prediction { kEps, kV, kX0 };
Prediction parse_prediction(const std::string& name);

// The regression target for the network at (x0, noise, t).
torch::Tensor training_target(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& t);

// Converts a network output at x_t into eps-hat, the form every sampler consumes.
torch::Tensor output_to_eps(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& output,
                            const torch::Tensor& x_t, const torch::Tensor& t);

}  // namespace difftrain::diffusion
