#include "trainer/ema.h"

#include <torch/torch.h>

#include <algorithm>

namespace difftrain {

Ema::Ema(torch::nn::Module& model, torch::nn::Module& shadow, double decay)
    : model_params_(model.parameters()), shadow_params_(shadow.parameters()), decay_(decay) {
  TORCH_CHECK(model_params_.size() == shadow_params_.size(), "EMA: model and shadow differ in parameter count");
  for (auto& p : shadow_params_) p.set_requires_grad(false);
}

double Ema::decay_at(int64_t step) const {
  return std::min(decay_, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
}

void Ema::update(int64_t step) {
  torch::NoGradGuard no_grad;
  const double d = decay_at(step);
  for (size_t i = 0; i < model_params_.size(); ++i) shadow_params_[i].lerp_(model_params_[i], 1.0 - d);
}

void copy_weights(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters(), dst = to.named_parameters();
  for (auto& item : src) dst[item.key()].copy_(item.value());
  auto src_b = from.named_buffers(), dst_b = to.named_buffers();
  for (auto& item : src_b) dst_b[item.key()].copy_(item.value());
}

}  // namespace difftrain
