// Dynamic loss scaling for fp16 training (Micikevicius et al. 2018, sec. 3.2;
// the rules of torch.cuda.amp.GradScaler): multiply the loss by S before
// backward; if any gradient is inf/NaN skip the step and halve S; after
// `growth_interval` clean steps double S. With scaling disabled S stays 1.
#pragma once

#include <torch/types.h>

#include <vector>

namespace difftrain {

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(bool enabled, double initial_scale = 65536.0, int64_t growth_interval = 2000);

  double scale() const { return enabled_ ? scale_ : 1.0; }
  bool enabled() const { return enabled_; }
  // Divides gradients by the scale in place; returns false if any is not finite.
  bool unscale_and_check(const std::vector<torch::Tensor>& grads) const;
  // Call once per step with whether the gradients were finite (the same on every rank).
  void update(bool grads_finite);

  // For checkpoints.
  int64_t clean_steps() const { return clean_steps_; }
  void restore(double scale, int64_t clean_steps) { scale_ = scale, clean_steps_ = clean_steps; }

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  int64_t clean_steps_ = 0;
};

}  // namespace difftrain
