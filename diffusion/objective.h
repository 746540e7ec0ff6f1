// What the network predicts and how its output converts to the quantities the
// samplers use. eps-prediction: Ho et al. 2020 (eq. 14, "L_simple");
// v-prediction: Salimans & Ho 2022 (sec. 4), v = sqrt(a) eps - sqrt(1 - a) x0.
// x0-prediction: the clean image itself (Ho et al. 2020, sec. 3.2 discuss it as an alternative;
// the target Min-SNR-γ's weighting is defined on, Hang et al. 2023, eq. 8).
// flow-prediction: rectified flow (Liu et al. 2022, arXiv 2209.03003; Esser et al. 2024, arXiv 2403.03206, eq. 1-3):
// the network sees x_flow = (1 - s) x0 + s eps and predicts its velocity along the straight path,
// v_flow = dx_flow/ds = eps - x0 (conditional flow matching). With the VP quantities of the same point
// (diffusion/schedule.h: x_flow = c x_vp, c = flow_input_scale(a), 1 - s = sqrt(a) c, s = sqrt(1 - a) c):
//   eps = x_flow + (1 - s) v = c (x_vp + sqrt(a) v),    x0 = x_flow - s v = c (x_vp - sqrt(1 - a) v).
#pragma once

#include <torch/types.h>

#include <string>

#include "diffusion/schedule.h"

namespace difftrain::diffusion {

enum class Prediction { kEps, kV, kX0, kFlow };
Prediction parse_prediction(const std::string& name);

// The regression target for the network at (x0, noise, t).
torch::Tensor training_target(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& t);

// What the network is given at the VP point x_t: x_t itself, or for flow-prediction x_flow = c(t) x_t.
// Training, guidance and export all go through it, so a flow network always sees its own coordinates.
torch::Tensor network_input(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& x_t,
                            const torch::Tensor& t);

// Whether sampling clips x0-hat to [-1, 1] by default (guided-diffusion's clip_denoised): for pixel data,
// whose range it is, it keeps strongly guided samples from saturating. A latent model's data are not confined
// to [-1, 1] and clipping distorts them (Stable Diffusion's schedulers never clip), except that an eps-model's
// x0-hat = (x_t - sqrt(1 - a) eps-hat) / sqrt(a) amplifies its error by 1/sqrt(a) at the first steps (2e4 at
// the cosine schedule's t = T-1), where the clip is what keeps the sample finite-looking. So: pixels always,
// latents only for eps-prediction (v, x0 and flow form x0-hat without that amplification).
bool clip_by_default(Prediction prediction, bool latent_data);

// Converts a network output at x_t into eps-hat, the form every sampler consumes.
torch::Tensor output_to_eps(Prediction prediction, const NoiseSchedule& schedule, const torch::Tensor& output,
                            const torch::Tensor& x_t, const torch::Tensor& t);

}  // namespace difftrain::diffusion
