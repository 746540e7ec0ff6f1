#include "model/attention_softmax.h"

#include "model/simd_math.h"

#include <ATen/Parallel.h>

#include <limits>

namespace difftrain::model {
namespace {

using namespace simd;

// One row: the max over valid keys, e = e^(s − max) (0 for masked keys) written over s, then
// weights = e / Σe rounded once to bf16. A NaN score makes the row NaN, as softmax does.
// kMasked is a template parameter so that every loop is branch-free (GCC vectorises none with a
// short-circuit load in it).
template <bool kMasked>
DIFFTRAIN_INLINE void softmax_row(float* __restrict s, uint16_t* __restrict w, int64_t n,
                                  const uint8_t* __restrict valid) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  auto is_valid = [&](int64_t i) { return !kMasked || valid[i] != 0; };
  float m = kLowest;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    const float v = is_valid(i) ? s[i] : kLowest;
    m = m > v ? m : v;
  }
  float lane_sum[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float e = fast_exp(s[i + l] - m);
      s[i + l] = is_valid(i + l) ? e : 0.0f;
      lane_sum[l] += s[i + l];
    }
  double total = 0;
  for (; i < n; ++i) {
    const float e = fast_exp(s[i] - m);
    s[i] = is_valid(i) ? e : 0.0f;
    total += s[i];
  }
  for (int l = 0; l < kLanes; ++l) total += lane_sum[l];
  const float inverse = static_cast<float>(1.0 / total);
  for (i = 0; i < n; ++i) store(w, i, s[i] * inverse);
}

DIFFTRAIN_INLINE void softmax_backward_row(const uint16_t* __restrict w, const float* __restrict dw,
                                           uint16_t* __restrict ds, int64_t n) {
  float lane_dot[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane_dot[l] += load(w, i + l) * dw[i + l];
  double total = 0;
  for (; i < n; ++i) total += static_cast<double>(load(w, i)) * dw[i];
  for (int l = 0; l < kLanes; ++l) total += lane_dot[l];
  const float dot = static_cast<float>(total);
  for (i = 0; i < n; ++i) store(ds, i, load(w, i) * (dw[i] - dot));
}

DIFFTRAIN_CLONES void softmax_rows(float* s, uint16_t* w, int64_t begin, int64_t end, int64_t n, const uint8_t* valid,
                                   int64_t rows_per_image) {
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row_valid = valid == nullptr ? nullptr : valid + (r / rows_per_image) * n;
    bool any = row_valid == nullptr;
    for (int64_t i = 0; i < n && !any; ++i) any = row_valid[i] != 0;
    if (!any) {
      for (int64_t i = 0; i < n; ++i) w[r * n + i] = 0;  // bf16 +0
      continue;
    }
    if (row_valid == nullptr) {
      softmax_row<false>(s + r * n, w + r * n, n, nullptr);
    } else {
      softmax_row<true>(s + r * n, w + r * n, n, row_valid);
    }
  }
}

DIFFTRAIN_CLONES void softmax_backward_rows(const uint16_t* w, const float* dw, uint16_t* ds, int64_t begin,
                                            int64_t end, int64_t n) {
  for (int64_t r = begin; r < end; ++r) softmax_backward_row(w + r * n, dw + r * n, ds + r * n, n);
}

// Rows per task: about 64 k elements, so small attentions stay on one thread.
int64_t grain(int64_t n) { return n >= 65536 ? 1 : 65536 / n; }

}  // namespace

void softmax_rows_to_bf16(float* scores, uint16_t* weights, int64_t rows, int64_t n, const uint8_t* valid,
                          int64_t rows_per_image) {
  if (rows == 0 || n == 0) return;
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    softmax_rows(scores, weights, begin, end, n, valid, rows_per_image);
  });
}

void softmax_backward_rows_bf16(const uint16_t* weights, const float* dweights, uint16_t* dscores, int64_t rows,
                                int64_t n) {
  if (rows == 0 || n == 0) return;
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    softmax_backward_rows(weights, dweights, dscores, begin, end, n);
  });
}

}  // namespace difftrain::model
