#include "model/layer_norm.h"

#include "model/group_norm_silu.h"
#include "model/simd_math.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain::model {
namespace {

using namespace simd;

// Σ (x_i − centre)^power over one bf16 row, float lanes summed in double.
template <int kPower>
DIFFTRAIN_INLINE double row_sum(const uint16_t* x, int64_t n, float centre) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = load(x, i + l) - centre;
      acc[l] += kPower == 1 ? d : d * d;
    }
  double total = 0;
  for (; i < n; ++i) {
    const double d = load(x, i) - centre;
    total += kPower == 1 ? d : d * d;
  }
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// Rows [begin, end) of (rows, n): y = (x − mean) rstd γ + β in bf16; the mean and rstd saved per row.
DIFFTRAIN_CLONES void forward_rows(const uint16_t* x, const float* gamma, const float* beta, double eps, int64_t begin,
                                   int64_t end, int64_t n, uint16_t* y, float* mean_out, float* rstd_out) {
  for (int64_t r = begin; r < end; ++r) {
    const uint16_t* row = x + r * n;
    const float mean = static_cast<float>(row_sum<1>(row, n, 0.0f) / static_cast<double>(n));
    const double var = row_sum<2>(row, n, mean) / static_cast<double>(n);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    for (int64_t i = 0; i < n; ++i) store(y + r * n, i, (load(row, i) - mean) * rstd * gamma[i] + beta[i]);
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

// dx = rstd (g γ − mean(g γ) − x̂ mean(g γ x̂)) in bf16 for rows [begin, end); dγ += g x̂, dβ += g into
// this chunk's float partial sums.
DIFFTRAIN_CLONES void backward_rows(const uint16_t* x, const uint16_t* dy, const float* gamma, const float* mean_in,
                                    const float* rstd_in, int64_t begin, int64_t end, int64_t n, uint16_t* dx,
                                    float* dgamma, float* dbeta) {
  for (int64_t r = begin; r < end; ++r) {
    const uint16_t *row = x + r * n, *g = dy + r * n;
    const float mean = mean_in[r], rstd = rstd_in[r];
    float acc1[kLanes] = {}, acc2[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float xhat = (load(row, i + l) - mean) * rstd, gg = load(g, i + l) * gamma[i + l];
        acc1[l] += gg;
        acc2[l] += gg * xhat;
      }
    double s1 = 0, s2 = 0;
    for (; i < n; ++i) {
      const float xhat = (load(row, i) - mean) * rstd, gg = load(g, i) * gamma[i];
      s1 += gg;
      s2 += static_cast<double>(gg) * xhat;
    }
    for (int l = 0; l < kLanes; ++l) s1 += acc1[l], s2 += acc2[l];
    const float a = static_cast<float>(s1 / static_cast<double>(n)), b = static_cast<float>(s2 / static_cast<double>(n));
    for (i = 0; i < n; ++i) {
      const float xhat = (load(row, i) - mean) * rstd, gi = load(g, i);
      store(dx + r * n, i, rstd * (gi * gamma[i] - a - xhat * b));
      dgamma[i] += gi * xhat;
      dbeta[i] += gi;
    }
  }
}

// Rows per chunk of the parameter gradients' partial sums: fixed, so the sums do not depend on the thread count.
constexpr int64_t kChunkRows = 64;

class LayerNormBf16 : public torch::autograd::Function<LayerNormBf16> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& weight, const torch::Tensor& bias, double eps) {
    const auto x = x_in.contiguous();
    const auto w = weight.contiguous(), b = bias.contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    auto y = torch::empty(x.sizes(), x.options());
    auto mean = torch::empty({rows}, torch::kFloat32), rstd = torch::empty({rows}, torch::kFloat32);
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    at::parallel_for(0, rows, kChunkRows, [&](int64_t begin, int64_t end) {
      forward_rows(xp, w.data_ptr<float>(), b.data_ptr<float>(), eps, begin, end, n, yp, mean.data_ptr<float>(),
                   rstd.data_ptr<float>());
    });
    ctx->save_for_backward({x, w, mean, rstd});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
    const int64_t n = x.size(-1), rows = x.numel() / n;
    const auto dy = grads[0].to(torch::kBFloat16).contiguous();
    auto dx = torch::empty_like(x);
    const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
    auto partial = torch::zeros({2, chunks, n}, torch::kFloat32);  // dγ, dβ per chunk
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    const auto* gp = reinterpret_cast<const uint16_t*>(dy.data_ptr<at::BFloat16>());
    auto* dxp = reinterpret_cast<uint16_t*>(dx.data_ptr<at::BFloat16>());
    float* pp = partial.data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        backward_rows(xp, gp, w.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), c * kChunkRows,
                      std::min(rows, (c + 1) * kChunkRows), n, dxp, pp + c * n, pp + (chunks + c) * n);
      }
    });
    const auto sums = partial.to(torch::kFloat64).sum(1).to(torch::kFloat32);  // (2, n)
    return {dx, sums[0], sums[1], torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fused_layer_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                               double eps) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("fused_layer_norm: " + what); };
  if (x.dim() < 1 || !x.device().is_cpu() || x.scalar_type() != torch::kBFloat16) fail("x must be a bf16 CPU tensor");
  const int64_t n = x.size(-1);
  for (const auto* t : {&weight, &bias})
    if (!t->defined() || t->scalar_type() != torch::kFloat32 || t->numel() != n)
      fail("weight/bias must be float32 (" + std::to_string(n) + ")");
  return LayerNormBf16::apply(x, weight, bias, eps);
}

torch::Tensor layer_norm_fp32(torch::nn::LayerNormImpl& norm, const torch::Tensor& x) {
  const auto& shape = norm.options.normalized_shape();
  if (fused_group_norm_silu_enabled() && x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() &&
      norm.options.elementwise_affine() && shape.size() == 1 && x.dim() >= 1 && x.size(-1) == shape[0] &&
      x.numel() > 0) {
    return fused_layer_norm(x, norm.weight, norm.bias, norm.options.eps());
  }
  return norm.forward(x.to(torch::kFloat32)).to(x.scalar_type());  // model/norm_fp32.h's norm_fp32
}

}  // namespace difftrain::model
