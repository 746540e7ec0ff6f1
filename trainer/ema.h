// Exponential moving average of the weights (Polyak averaging), the weights
// sampling uses. The effective decay ramps up as min(decay, (1 + n) / (10 + n))
// so early averages are not dominated by the random initialisation.
#pragma once

#include <torch/nn/module.h>

namespace difftrain {

class Ema {
 public:
  Ema(torch::nn::Module& model, torch::nn::Module& shadow, double decay);
  void update(int64_t step);  // step: number of optimizer steps taken so far
  double decay_at(int64_t step) const;

 private:
  std::vector<torch::Tensor> model_params_, shadow_params_;
  double decay_;
};

// Copies every parameter and buffer of `from` into `to` (same architecture).
void copy_weights(torch::nn::Module& from, torch::nn::Module& to);

}  // namespace difftrain
