#include "trainer/fused_adamw.h"

#include <torch/utils.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace difftrain {

namespace {

// One parameter's update, element by element, in the order of LibTorch 1.13's
// torch::optim::AdamW::step (torch/csrc/api/src/optim/adamw.cpp):
//   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Compiled with AVX-512, AVX2 and baseline clones, picked at load time (GCC ifunc).
__attribute__((target_clones("avx512f", "avx2", "default")))
void adamw_update(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                  int64_t n, float decay_factor, float beta1, float one_minus_beta1, float beta2,
                  float one_minus_beta2, float sqrt_bias_correction2, float eps, float neg_step_size) {
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i];
    const float param = p[i] * decay_factor;
    const float mean = m[i] * beta1 + one_minus_beta1 * grad;
    const float second = v[i] * beta2 + one_minus_beta2 * grad * grad;
    m[i] = mean;
    v[i] = second;
    p[i] = param + neg_step_size * (mean / (std::sqrt(second) / sqrt_bias_correction2 + eps));
  }
}

bool fusable(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.layout() == torch::kStrided &&
         t.is_contiguous();
}

}  // namespace

bool fused_adamw_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("DIFFTRAIN_FUSED_ADAMW");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  bool all_fusable = fused_adamw_enabled();
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    all_fusable = all_fusable && !options.amsgrad();
    for (auto& p : group.params()) {
      if (p.grad().defined()) all_fusable = all_fusable && fusable(p) && fusable(p.grad());
    }
  }
  if (!all_fusable) return torch::optim::AdamW::step(std::move(closure));

  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto key = c10::guts::to_string(p.unsafeGetTensorImpl());  // LibTorch's state key
      auto found = state_.find(key);
      if (found == state_.end()) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        found = state_.emplace(key, std::move(fresh)).first;
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*found->second);
      auto& exp_avg = state.exp_avg();
      auto& exp_avg_sq = state.exp_avg_sq();
      if (!fusable(exp_avg) || !fusable(exp_avg_sq)) {  // e.g. a state loaded in another layout
        exp_avg = exp_avg.contiguous();
        exp_avg_sq = exp_avg_sq.contiguous();
      }
      state.step(state.step() + 1);
      const double bias_correction1 = 1 - std::pow(beta1, state.step());
      const double bias_correction2 = 1 - std::pow(beta2, state.step());
      adamw_update(p.data_ptr<float>(), p.grad().data_ptr<float>(), exp_avg.data_ptr<float>(),
                   exp_avg_sq.data_ptr<float>(), p.numel(), static_cast<float>(1 - options.lr() * options.weight_decay()),
                   static_cast<float>(beta1), static_cast<float>(1 - beta1), static_cast<float>(beta2),
                   static_cast<float>(1 - beta2), static_cast<float>(std::sqrt(bias_correction2)),
                   static_cast<float>(options.eps()), static_cast<float>(-options.lr() / bias_correction1));
    }
  }
  return loss;
}

}  // namespace difftrain
