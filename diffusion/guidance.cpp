#include "diffusion/guidance.h"

#include <torch/torch.h>

namespace difftrain::diffusion {

EpsModel guided_eps_model(Network network, torch::Tensor tokens, torch::Tensor null_tokens, double guidance,
                          Prediction prediction, const NoiseSchedule& schedule) {
  return [=](const torch::Tensor& x, const torch::Tensor& t) -> torch::Tensor {
    auto eps_of = [&](const torch::Tensor& xs, const torch::Tensor& ts, const torch::Tensor& toks) {
      const auto input = network_input(prediction, schedule, xs, ts);
      return output_to_eps(prediction, schedule, network(input, ts, toks).to(xs.scalar_type()), xs, ts);
    };
    // The weight on one branch is zero: one forward suffices.
    if (guidance == 1.0) return eps_of(x, t, tokens);
    if (guidance == 0.0) return eps_of(x, t, null_tokens);
    auto both = eps_of(torch::cat({x, x}), torch::cat({t, t}), torch::cat({tokens, null_tokens}));
    auto halves = both.chunk(2, 0);
    return halves[1] + guidance * (halves[0] - halves[1]);
  };
}

}  // namespace difftrain::diffusion
