// model/group_norm_silu: the fused GroupNorm (+ scale/shift) + SiLU against LibTorch's own group_norm and silu
// evaluated in float64 on the same (bf16-rounded) inputs, output and all five gradients; deterministic; and
// the switch: float32 inputs and DIFFTRAIN_FUSED_NORM=0 take the eager ops bit for bit.
#include <gtest/gtest.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <cstdio>

#include "model/group_norm_silu.h"

namespace {
namespace dm = difftrain::model;

struct Grads {
  torch::Tensor y, x, weight, bias, scale, shift;
};

// The reference: LibTorch's group_norm and silu in float64 autograd.
Grads reference(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight, const torch::Tensor& bias,
                const torch::Tensor& scale, const torch::Tensor& shift, const torch::Tensor& upstream) {
  auto x64 = x.to(torch::kFloat64).requires_grad_();
  auto w64 = weight.to(torch::kFloat64).requires_grad_(), b64 = bias.to(torch::kFloat64).requires_grad_();
  torch::Tensor s64, t64;
  auto h = torch::group_norm(x64, groups, w64, b64, 1e-5);
  if (scale.defined()) {
    s64 = scale.to(torch::kFloat64).requires_grad_();
    t64 = shift.to(torch::kFloat64).requires_grad_();
    h = h * (1 + s64.unsqueeze(-1).unsqueeze(-1)) + t64.unsqueeze(-1).unsqueeze(-1);
  }
  auto y = torch::silu(h);
  (y * upstream.to(torch::kFloat64)).sum().backward();
  return {y.detach(), x64.grad(), w64.grad(), b64.grad(), s64.defined() ? s64.grad() : torch::Tensor(),
          t64.defined() ? t64.grad() : torch::Tensor()};
}

Grads fused(const torch::Tensor& x_value, int64_t groups, const torch::Tensor& weight, const torch::Tensor& bias,
            const torch::Tensor& scale, const torch::Tensor& shift, const torch::Tensor& upstream) {
  auto x = x_value.clone().requires_grad_();
  auto w = weight.clone().requires_grad_(), b = bias.clone().requires_grad_();
  torch::Tensor s, t;
  if (scale.defined()) s = scale.clone().requires_grad_(), t = shift.clone().requires_grad_();
  auto y = dm::fused_group_norm_silu(x, groups, w, b, 1e-5, s, t);
  EXPECT_EQ(y.scalar_type(), x.scalar_type());  // bf16 out for bf16 in: what the next convolution reads
  (y * upstream).sum().backward();
  return {y.detach(), x.grad(), w.grad(), b.grad(), s.defined() ? s.grad() : torch::Tensor(),
          t.defined() ? t.grad() : torch::Tensor()};
}

double relative_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a.to(torch::kFloat64) - ref).abs().max() / ref.abs().max()).item<double>();
}

}  // namespace

TEST(GroupNormSilu, MatchesGroupNormAndSiluInFloat64WithAllGradients) {
  torch::manual_seed(0);
  struct Case {
    int64_t n, c, groups, side;
    bool scale_shift;
    torch::Dtype dtype;
  };
  // The UNet's shapes (8 groups; 64 and 192 channels at 32 and 16 px), a row length that is not a multiple of
  // the 16 vector lanes (5x5), an offset mean (the variance pass must be centred), bf16 and float32 inputs.
  for (const Case c : {Case{4, 64, 8, 32, true, torch::kBFloat16}, Case{2, 192, 8, 16, false, torch::kBFloat16},
                       Case{3, 32, 4, 5, true, torch::kFloat32}, Case{2, 16, 8, 7, false, torch::kFloat32}}) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " c " + std::to_string(c.c) + " side " + std::to_string(c.side));
    auto x = (torch::randn({c.n, c.c, c.side, c.side}) * 2 + 3).to(c.dtype);  // rounded once: both see these values
    auto weight = torch::randn({c.c}) * 0.5 + 1, bias = torch::randn({c.c}) * 0.3;
    torch::Tensor scale, shift;
    if (c.scale_shift) scale = torch::randn({c.n, c.c}) * 0.2, shift = torch::randn({c.n, c.c}) * 0.5;
    // An upstream gradient the output's dtype represents exactly (autograd hands a bf16 output a bf16 gradient).
    auto upstream = torch::randn({c.n, c.c, c.side, c.side}).to(c.dtype).to(torch::kFloat32);
    const Grads ref = reference(x, c.groups, weight, bias, scale, shift, upstream);
    const Grads got = fused(x, c.groups, weight, bias, scale, shift, upstream);
    const double ey = relative_error(got.y, ref.y), ex = relative_error(got.x, ref.x),
                 ew = relative_error(got.weight, ref.weight), eb = relative_error(got.bias, ref.bias);
    std::printf("n %lld c %lld side %lld %s: relative error y %.2g dx %.2g dgamma %.2g dbeta %.2g", (long long)c.n,
                (long long)c.c, (long long)c.side, c.dtype == torch::kBFloat16 ? "bf16" : "fp32", ey, ex, ew, eb);
    // Float32 arithmetic on exactly representable inputs: a few float32 ulps of the largest value, then for
    // bf16 one rounding to nearest even of that value (as the convolution's cast of the float32 result did):
    // equal to the float64 result rounded to bf16 except where float32 summation order crosses a tie.
    if (c.dtype == torch::kBFloat16) {
      EXPECT_LT(ey, 4e-3);
      const double mismatched = got.y.ne(ref.y.to(torch::kBFloat16)).to(torch::kFloat64).mean().item<double>();
      std::printf(" (y differs from float64 rounded to bf16 in %.2g of elements)", mismatched);
      EXPECT_LT(mismatched, 1e-3);
    } else {
      EXPECT_LT(ey, 1e-6);
    }
    EXPECT_LT(ew, 1e-5);
    EXPECT_LT(eb, 1e-5);
    // dx is written in x's dtype: bf16 rounding (2^-8 relative) for bf16, float32 otherwise.
    EXPECT_LT(ex, c.dtype == torch::kBFloat16 ? 4e-3 : 1e-5);
    EXPECT_EQ(got.x.scalar_type(), c.dtype);
    if (c.scale_shift) {
      const double es = relative_error(got.scale, ref.scale), et = relative_error(got.shift, ref.shift);
      std::printf(" dscale %.2g dshift %.2g", es, et);
      EXPECT_LT(es, 1e-5);
      EXPECT_LT(et, 1e-5);
    }
    std::printf("\n");
    // Deterministic: the same bits again.
    const Grads again = fused(x, c.groups, weight, bias, scale, shift, upstream);
    EXPECT_TRUE(torch::equal(again.y, got.y));
    EXPECT_TRUE(torch::equal(again.x, got.x));
    EXPECT_TRUE(torch::equal(again.weight, got.weight));
  }
}

TEST(GroupNormSilu, NonFiniteInputsStayNonFinite) {
  auto x = torch::randn({2, 8, 4, 4}).to(torch::kBFloat16);
  x[1][3][2][2] = std::numeric_limits<float>::quiet_NaN();
  auto y = dm::fused_group_norm_silu(x, 4, torch::ones({8}), torch::zeros({8}), 1e-5);
  // Image 1's group with the NaN is all NaN, as in group_norm; every other group is finite.
  EXPECT_TRUE(torch::isnan(y[1].slice(0, 2, 4)).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(y[0]).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(y[1].slice(0, 0, 2)).all().item<bool>());
}

TEST(GroupNormSilu, TheSwitchAndFloat32TakeTheEagerOpsBitForBit) {
  torch::manual_seed(1);
  torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(4, 16));
  {
    torch::NoGradGuard guard;
    norm->weight.uniform_(0.5, 1.5);
    norm->bias.uniform_(-0.3, 0.3);
  }
  auto x = torch::randn({2, 16, 6, 6});
  auto scale = torch::randn({2, 16, 1, 1}) * 0.1, shift = torch::randn({2, 16, 1, 1}) * 0.1;
  const auto eager = torch::silu(norm(x) * (1 + scale) + shift);
  EXPECT_TRUE(torch::equal(dm::group_norm_silu(*norm, x, scale, shift), eager));  // float32: the eager ops
  const auto x_bf16 = x.to(torch::kBFloat16);
  const auto eager_bf16 = torch::silu(norm(x_bf16.to(torch::kFloat32)) * (1 + scale) + shift);
  const bool was = dm::fused_group_norm_silu_enabled();
  dm::set_fused_group_norm_silu_enabled(false);
  EXPECT_TRUE(torch::equal(dm::group_norm_silu(*norm, x_bf16, scale, shift), eager_bf16));
  dm::set_fused_group_norm_silu_enabled(true);
  const auto fused_bf16 = dm::group_norm_silu(*norm, x_bf16, scale, shift);
  EXPECT_EQ(fused_bf16.scalar_type(), torch::kBFloat16);
  // The eager float32 result rounded once to bf16, as the next convolution's cast did, to summation order.
  EXPECT_LT(fused_bf16.ne(eager_bf16.to(torch::kBFloat16)).to(torch::kFloat64).mean().item<double>(), 1e-2);
  EXPECT_LT((fused_bf16.to(torch::kFloat32) - eager_bf16).abs().max().item<double>(), 1e-2);
  dm::set_fused_group_norm_silu_enabled(was);
}

TEST(GroupNormSilu, BadInputsAreNamed) {
  auto ok = torch::randn({2, 8, 4, 4});
  EXPECT_THROW(dm::fused_group_norm_silu(ok, 3, torch::ones({8}), torch::zeros({8}), 1e-5), std::invalid_argument);
  EXPECT_THROW(dm::fused_group_norm_silu(ok.to(torch::kFloat64), 4, torch::ones({8}), torch::zeros({8}), 1e-5),
               std::invalid_argument);
  EXPECT_THROW(dm::fused_group_norm_silu(ok, 4, torch::ones({8}), torch::zeros({8}), 1e-5, torch::zeros({2, 8})),
               std::invalid_argument);
}
