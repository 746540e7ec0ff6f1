// Classifier-free guidance (Ho & Salimans 2022):
//   eps-hat = eps(x, t, null) + w * (eps(x, t, c) - eps(x, t, null)).
// w = 1 is the plain conditional model, w = 0 the unconditional one. The paper's
// own form (1 + w') eps(c) - w' eps(null) is the same with w = 1 + w'.
// Conditional and unconditional run as one batched forward of size 2B.
#pragma once

#include <torch/types.h>

#include <functional>

#include "diffusion/objective.h"
#include "diffusion/samplers.h"

namespace difftrain::diffusion {

// The raw network: (x_t, t, tokens) -> output in the network's parameterisation.
using Network = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t,
                                            const torch::Tensor& tokens)>;

// tokens / null_tokens: (B, L) int64. Returns the guided eps-model for the samplers.
EpsModel guided_eps_model(Network network, torch::Tensor tokens, torch::Tensor null_tokens, double guidance,
                          Prediction prediction, const NoiseSchedule& schedule);

}  // namespace difftrain::diffusion
