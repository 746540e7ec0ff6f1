#include "trainer/loss_scaler.h"

#include <torch/torch.h>

#include <algorithm>

namespace difftrain {

DynamicLossScaler::DynamicLossScaler(bool enabled, double initial_scale, int64_t growth_interval)
    : enabled_(enabled), scale_(initial_scale), growth_interval_(growth_interval) {}

bool DynamicLossScaler::unscale_and_check(const std::vector<torch::Tensor>& grads) const {
  torch::NoGradGuard no_grad;
  bool finite = true;
  for (const auto& g : grads) {
    if (!g.defined()) continue;
    if (enabled_) g.mul_(1.0 / scale_);
    finite = finite && torch::isfinite(g).all().item<bool>();
  }
  return finite;
}

void DynamicLossScaler::update(bool grads_finite) {
  if (!enabled_) return;
  if (!grads_finite) {
    scale_ = std::max(scale_ * 0.5, 1.0);
    clean_steps_ = 0;
  } else if (++clean_steps_ >= growth_interval_) {
    scale_ *= 2.0;
    clean_steps_ = 0;
  }
}

}  // namespace difftrain
