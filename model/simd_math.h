// Scalar helpers for hand-fused CPU kernels that the compiler vectorises (no branches, no libm calls):
// bfloat16 loads and stores, e^x, and the lane count of the accumulator arrays. Internal to model/:
// included only by the kernel files compiled with -O3 -fno-math-errno (model/CMakeLists.txt), whose
// entry points are compiled for AVX-512, AVX2 and the baseline (DIFFTRAIN_CLONES) and picked at load time.
#pragma once

#include <cstdint>
#include <cstring>

namespace difftrain::model::simd {

#define DIFFTRAIN_INLINE inline __attribute__((always_inline))
#define DIFFTRAIN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// Independent accumulators per lane: a reduction the compiler vectorises without reassociating.
constexpr int kLanes = 16;

DIFFTRAIN_INLINE float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
DIFFTRAIN_INLINE uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 is the upper half of a float32.
DIFFTRAIN_INLINE float load(const float* p, int64_t i) { return p[i]; }
DIFFTRAIN_INLINE float load(const uint16_t* p, int64_t i) { return from_bits(static_cast<uint32_t>(p[i]) << 16); }
DIFFTRAIN_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
// Round to nearest even, NaN kept a (quiet) NaN: c10::BFloat16's rounding.
DIFFTRAIN_INLINE void store(uint16_t* p, int64_t i, float v) {
  const uint32_t u = to_bits(v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  p[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

// e^x, Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-7 polynomial, 2^n by the exponent bits.
// Relative error under 2e-7 on the clamped range [-87, 88] (below -87 it returns e^-87 ≈ 1.6e-38, not 0);
// NaN stays NaN.
DIFFTRAIN_INLINE float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  float t = x * 1.44269504088896341f + kShifter;
  const int32_t n = static_cast<int32_t>(to_bits(t)) - static_cast<int32_t>(to_bits(kShifter));
  t -= kShifter;
  float r = x - t * 0.693359375f;
  r = r - t * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * from_bits(static_cast<uint32_t>(n + 127) << 23);
}

}  // namespace difftrain::model::simd
