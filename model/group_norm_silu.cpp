#include "model/group_norm_silu.h"

#include "model/simd_math.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain::model {
namespace {

using namespace simd;

__attribute__((always_inline)) inline float sigmoid(float z) { return 1.0f / (1.0f + fast_exp(-z)); }

// sum over p[0..n) of (p[i] - centre)^power (power 1 or 2), float lanes summed in double.
template <class T, int kPower>
DIFFTRAIN_INLINE double centred_sum(const T* p, int64_t n, float centre) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = load(p, i + l) - centre;
      acc[l] += kPower == 1 ? d : d * d;
    }
  double total = 0;
  for (; i < n; ++i) {
    const double d = load(p, i) - centre;
    total += kPower == 1 ? d : d * d;
  }
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// y[i] = silu(a x[i] + b) for one channel row.
template <class T>
// In blocks through a float buffer: GCC vectorises neither a loop that computes in float32 and stores bf16
// at once, nor one that mixes the two widths, but it does each half on its own.
DIFFTRAIN_INLINE void affine_silu_row(const T* __restrict x, T* __restrict y, int64_t n, float a, float b) {
  constexpr int64_t kBlock = 64;
  float block[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = n - start < kBlock ? n - start : kBlock;
    for (int64_t i = 0; i < m; ++i) {
      const float z = a * load(x, start + i) + b;
      block[i] = z * sigmoid(z);
    }
    for (int64_t i = 0; i < m; ++i) store(y, start + i, block[i]);
  }
}

// Backward of one channel row: dz = dy silu'(z) into `dz`; returns sum(dz) and sum(dz xhat) through s1, s2.
template <class T>
DIFFTRAIN_INLINE void silu_backward_row(const T* __restrict x, const T* __restrict dy, float* __restrict dz, int64_t n, float a, float b, float mean,
                                        float rstd, double* s1, double* s2) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = a * load(x, i) + b;
    const float sig = sigmoid(z);
    dz[i] = load(dy, i) * sig * (1.0f + z * (1.0f - sig));  // d/dz z sigmoid(z)
  }
  // The two sums in a second pass over the row (in L1): separate loops vectorise where one fused loop does not.
  float acc1[kLanes] = {}, acc2[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      acc1[l] += dz[i + l];
      acc2[l] += dz[i + l] * ((load(x, i + l) - mean) * rstd);
    }
  double t1 = 0, t2 = 0;
  for (; i < n; ++i) {
    t1 += dz[i];
    t2 += static_cast<double>(dz[i]) * ((load(x, i) - mean) * rstd);
  }
  for (int l = 0; l < kLanes; ++l) t1 += acc1[l], t2 += acc2[l];
  *s1 = t1;
  *s2 = t2;
}

// dx[i] = dz[i] p + x[i] q + r for one channel row.
template <class T>
DIFFTRAIN_INLINE void input_gradient_row(const T* __restrict x, const float* __restrict dz, T* __restrict dx, int64_t n,
                                         float p, float q, float r) {
  for (int64_t i = 0; i < n; ++i) store(dx, i, dz[i] * p + load(x, i) * q + r);
}

// The entry points, compiled for AVX-512, AVX2 and the baseline and picked at load time (as
// trainer/fused_adamw.cpp); one overload per dtype, the row kernels above inlined into each.
#define DIFFTRAIN_ROW_KERNELS(T)                                                                                   \
  DIFFTRAIN_CLONES double row_sum(const T* p, int64_t n) { return centred_sum<T, 1>(p, n, 0.0f); }                 \
  DIFFTRAIN_CLONES double row_centred_squares(const T* p, int64_t n, float centre) {                               \
    return centred_sum<T, 2>(p, n, centre);                                                                        \
  }                                                                                                                \
  DIFFTRAIN_CLONES void row_affine_silu(const T* x, T* y, int64_t n, float a, float b) {                           \
    affine_silu_row(x, y, n, a, b);                                                                                \
  }                                                                                                                \
  DIFFTRAIN_CLONES void row_silu_backward(const T* x, const T* dy, float* dz, int64_t n, float a, float b,         \
                                          float mean, float rstd, double* s1, double* s2) {                        \
    silu_backward_row(x, dy, dz, n, a, b, mean, rstd, s1, s2);                                                     \
  }                                                                                                                \
  DIFFTRAIN_CLONES void row_input_gradient(const T* x, const float* dz, T* dx, int64_t n, float p, float q,        \
                                           float r) {                                                              \
    input_gradient_row(x, dz, dx, n, p, q, r);                                                                     \
  }
DIFFTRAIN_ROW_KERNELS(float)
DIFFTRAIN_ROW_KERNELS(uint16_t)
#undef DIFFTRAIN_ROW_KERNELS

struct Shape {
  int64_t N, C, G, HW;
  int64_t per_group() const { return C / G; }
};

// The per-(image, channel) multiplier 1 + scale and additive shift (1 and 0 without them).
struct ScaleShift {
  const float* scale;  // (N, C) or nullptr
  const float* shift;
  float multiplier(int64_t n, int64_t c, int64_t C) const { return scale ? 1.0f + scale[n * C + c] : 1.0f; }
  float offset(int64_t n, int64_t c, int64_t C) const { return shift ? shift[n * C + c] : 0.0f; }
};

template <class T>
void forward_kernel(const T* x, const float* gamma, const float* beta, ScaleShift ss, double eps, const Shape& s,
                    T* y, float* mean_out, float* rstd_out) {
  const int64_t cg = s.per_group(), K = cg * s.HW;
  at::parallel_for(0, s.N * s.G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / s.G, g = ng % s.G;
      const int64_t offset = (n * s.C + g * cg) * s.HW;
      // Two passes over the group (it is small enough to stay in cache): the mean, then the centred variance.
      const float mean = static_cast<float>(row_sum(x + offset, K) / static_cast<double>(K));
      const double var = row_centred_squares(x + offset, K, mean) / static_cast<double>(K);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
      mean_out[ng] = mean;
      rstd_out[ng] = rstd;
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k;
        const float m = ss.multiplier(n, c, s.C);
        // ((x - mean) rstd gamma + beta) m + shift = a x + b
        const float a = rstd * gamma[c] * m;
        const float b = (beta[c] - mean * rstd * gamma[c]) * m + ss.offset(n, c, s.C);
        row_affine_silu(x + offset + k * s.HW, y + offset + k * s.HW, s.HW, a, b);
      }
    }
  });
}

// dz = dy silu'(z); z = (xhat gamma + beta) m + shift, xhat = (x - mean) rstd. With S1 = sum dz and S2 = sum dz xhat
// per (n, c): d shift = S1, d scale = gamma S2 + beta S1, d gamma = sum_n m S2, d beta = sum_n m S1, and for
// dxhat = dz gamma m: dx = rstd (dxhat - mean_g(dxhat) - xhat mean_g(dxhat xhat)) (the GroupNorm backward).
template <class T>
void backward_kernel(const T* x, const T* dy, const float* gamma, const float* beta, ScaleShift ss,
                     const float* mean_in, const float* rstd_in, const Shape& s, T* dx, double* s1, double* s2) {
  const int64_t cg = s.per_group(), K = cg * s.HW;
  at::parallel_for(0, s.N * s.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dz(static_cast<size_t>(K));
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / s.G, g = ng % s.G;
      const int64_t offset = (n * s.C + g * cg) * s.HW;
      const float mean = mean_in[ng], rstd = rstd_in[ng];
      double sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k;
        const float m = ss.multiplier(n, c, s.C);
        const float a = rstd * gamma[c] * m;
        const float b = (beta[c] - mean * rstd * gamma[c]) * m + ss.offset(n, c, s.C);
        row_silu_backward(x + offset + k * s.HW, dy + offset + k * s.HW, dz.data() + k * s.HW, s.HW, a, b, mean,
                          rstd, &s1[n * s.C + c], &s2[n * s.C + c]);
        sum_dxhat += static_cast<double>(gamma[c]) * m * s1[n * s.C + c];
        sum_dxhat_xhat += static_cast<double>(gamma[c]) * m * s2[n * s.C + c];
      }
      const double mean_dxhat = sum_dxhat / static_cast<double>(K);
      const double mean_dxhat_xhat = sum_dxhat_xhat / static_cast<double>(K);
      // dx = dz (rstd gamma m) + x q + r with q = -rstd^2 mean(dxhat xhat), r = -rstd mean(dxhat) - mean q.
      const double q = -static_cast<double>(rstd) * rstd * mean_dxhat_xhat;
      const double r = -static_cast<double>(rstd) * mean_dxhat - static_cast<double>(mean) * q;
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k;
        const float p = rstd * gamma[c] * ss.multiplier(n, c, s.C);
        row_input_gradient(x + offset + k * s.HW, dz.data() + k * s.HW, dx + offset + k * s.HW, s.HW, p,
                           static_cast<float>(q), static_cast<float>(r));
      }
    }
  });
}

void check_inputs(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight, const torch::Tensor& bias,
                  const torch::Tensor& scale, const torch::Tensor& shift) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("fused_group_norm_silu: " + what); };
  if (x.dim() != 4 || !x.device().is_cpu()) fail("x must be a 4-D CPU tensor");
  if (x.scalar_type() != torch::kFloat32 && x.scalar_type() != torch::kBFloat16) fail("x must be float32 or bfloat16");
  const int64_t N = x.size(0), C = x.size(1);
  if (groups < 1 || C % groups != 0) fail("channels " + std::to_string(C) + " not divisible by " + std::to_string(groups));
  for (const auto* t : {&weight, &bias})
    if (!t->defined() || t->scalar_type() != torch::kFloat32 || t->numel() != C) fail("weight/bias must be float32 (C)");
  if (scale.defined() != shift.defined()) fail("scale and shift come together");
  for (const auto* t : {&scale, &shift})
    if (t->defined() && (t->scalar_type() != torch::kFloat32 || t->dim() != 2 || t->size(0) != N || t->size(1) != C))
      fail("scale/shift must be float32 (N, C)");
}

class GroupNormSilu : public torch::autograd::Function<GroupNormSilu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& scale_in,
                               const torch::Tensor& shift_in, int64_t groups, double eps, bool has_scale) {
    const auto x = x_in.contiguous();
    const auto w = weight.contiguous(), b = bias.contiguous();
    const auto scale = scale_in.contiguous(), shift = shift_in.contiguous();
    const Shape s{x.size(0), x.size(1), groups, x.size(2) * x.size(3)};
    auto y = torch::empty(x.sizes(), x.options());  // x's dtype: bf16 is what the next convolution reads
    auto mean = torch::empty({s.N * s.G}, torch::kFloat32), rstd = torch::empty({s.N * s.G}, torch::kFloat32);
    const ScaleShift ss{has_scale ? scale.data_ptr<float>() : nullptr, has_scale ? shift.data_ptr<float>() : nullptr};
    if (x.scalar_type() == torch::kBFloat16)
      forward_kernel(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), w.data_ptr<float>(),
                     b.data_ptr<float>(), ss, eps, s, reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()),
                     mean.data_ptr<float>(), rstd.data_ptr<float>());
    else
      forward_kernel(x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), ss, eps, s, y.data_ptr<float>(),
                     mean.data_ptr<float>(), rstd.data_ptr<float>());
    ctx->save_for_backward({x, w, b, scale, shift, mean, rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_scale"] = has_scale;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &b = saved[2], &scale = saved[3], &shift = saved[4], &mean = saved[5],
               &rstd = saved[6];
    const bool has_scale = ctx->saved_data["has_scale"].toBool();
    const Shape s{x.size(0), x.size(1), ctx->saved_data["groups"].toInt(), x.size(2) * x.size(3)};
    const auto dy = grads[0].to(x.scalar_type()).contiguous();
    auto dx = torch::empty_like(x);
    auto s1 = torch::empty({s.N, s.C}, torch::kFloat64), s2 = torch::empty({s.N, s.C}, torch::kFloat64);
    const ScaleShift ss{has_scale ? scale.data_ptr<float>() : nullptr, has_scale ? shift.data_ptr<float>() : nullptr};
    if (x.scalar_type() == torch::kBFloat16)
      backward_kernel(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                      reinterpret_cast<const uint16_t*>(dy.data_ptr<at::BFloat16>()),
                      w.data_ptr<float>(), b.data_ptr<float>(), ss, mean.data_ptr<float>(), rstd.data_ptr<float>(), s,
                      reinterpret_cast<uint16_t*>(dx.data_ptr<at::BFloat16>()), s1.data_ptr<double>(),
                      s2.data_ptr<double>());
    else
      backward_kernel(x.data_ptr<float>(), dy.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), ss,
                      mean.data_ptr<float>(), rstd.data_ptr<float>(), s, dx.data_ptr<float>(), s1.data_ptr<double>(),
                      s2.data_ptr<double>());
    // The parameter gradients from the per-(image, channel) sums, in float64, then float32.
    const auto m = has_scale ? 1 + scale.to(torch::kFloat64) : torch::ones({s.N, s.C}, torch::kFloat64);
    const auto dweight = (m * s2).sum(0).to(torch::kFloat32);
    const auto dbias = (m * s1).sum(0).to(torch::kFloat32);
    torch::Tensor dscale, dshift;
    if (has_scale) {
      dscale = (w.to(torch::kFloat64) * s2 + b.to(torch::kFloat64) * s1).to(torch::kFloat32);
      dshift = s1.to(torch::kFloat32);
    }
    return {dx, dweight, dbias, dscale, dshift, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

std::atomic<int> g_enabled{-1};  // -1: not read from the environment yet

}  // namespace

torch::Tensor fused_group_norm_silu(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                                    const torch::Tensor& bias, double eps, const torch::Tensor& scale,
                                    const torch::Tensor& shift) {
  check_inputs(x, groups, weight, bias, scale, shift);
  // Autograd functions take defined tensors: no scale/shift is passed as zeros the kernels never read.
  if (scale.defined()) return GroupNormSilu::apply(x, weight, bias, scale, shift, groups, eps, true);
  const auto unused = torch::zeros({x.size(0), x.size(1)});
  return GroupNormSilu::apply(x, weight, bias, unused, unused, groups, eps, false);
}

bool fused_group_norm_silu_enabled() {
  int value = g_enabled.load();
  if (value < 0) {
    const char* env = std::getenv("DIFFTRAIN_FUSED_NORM");
    if (env != nullptr && std::string(env) != "0" && std::string(env) != "1")
      throw std::runtime_error(std::string("DIFFTRAIN_FUSED_NORM=") + env +
                               ": expected 1 (the default: fused GroupNorm + SiLU under bf16) or 0 (the eager ops)");
    value = env && std::string(env) == "0" ? 0 : 1;
    g_enabled.store(value);
  }
  return value == 1;
}

void set_fused_group_norm_silu_enabled(bool enabled) { g_enabled.store(enabled ? 1 : 0); }

torch::Tensor group_norm_silu(torch::nn::GroupNormImpl& norm, const torch::Tensor& x, const torch::Tensor& scale,
                              const torch::Tensor& shift) {
  if (fused_group_norm_silu_enabled() && x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() &&
      x.dim() == 4 && norm.options.affine()) {
    const int64_t N = x.size(0), C = x.size(1);
    auto flat = [&](const torch::Tensor& t) {
      return t.defined() ? t.to(torch::kFloat32).reshape({N, C}) : torch::Tensor();
    };
    return fused_group_norm_silu(x, norm.options.num_groups(), norm.weight, norm.bias, norm.options.eps(),
                                 flat(scale), flat(shift));
  }
  auto h = norm.forward(x.to(torch::kFloat32));  // model/norm_fp32.h's norm_in_fp32
  if (scale.defined()) h = h * (1 + scale) + shift;
  return torch::silu(h);
}

}  // namespace difftrain::model
