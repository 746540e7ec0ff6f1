// Learning rate: linear warm-up then cosine decay to lr * min_ratio
// (Goyal et al. 2017 warm-up; Loshchilov & Hutter 2017 cosine).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace difftrain {

// step: 0-based index of the optimizer step about to be taken.
inline double learning_rate_at(int64_t step, double peak, int64_t warmup, int64_t total, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = std::max<int64_t>(total - warmup, 1);
  const double progress = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

}  // namespace difftrain
