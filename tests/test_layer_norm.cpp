// model/layer_norm: the fused bf16 LayerNorm against LibTorch's layer_norm evaluated in float64 on the same
// bf16 input, output and the three gradients; deterministic whatever the thread count; NaN propagates; and
// layer_norm_fp32 takes the eager ops for float32 and with DIFFTRAIN_FUSED_NORM off.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <limits>

#include "model/group_norm_silu.h"
#include "model/layer_norm.h"

namespace {
namespace dm = difftrain::model;

struct Grads {
  torch::Tensor y, x, weight, bias;
};

Grads reference(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                const torch::Tensor& upstream) {
  auto x64 = x.to(torch::kFloat64).requires_grad_();
  auto w64 = weight.to(torch::kFloat64).requires_grad_(), b64 = bias.to(torch::kFloat64).requires_grad_();
  auto y = torch::layer_norm(x64, {x.size(-1)}, w64, b64, 1e-5);
  (y * upstream.to(torch::kFloat64)).sum().backward();
  return {y.detach(), x64.grad(), w64.grad(), b64.grad()};
}

Grads fused(const torch::Tensor& x_value, const torch::Tensor& weight, const torch::Tensor& bias,
            const torch::Tensor& upstream) {
  auto x = x_value.clone().requires_grad_();
  auto w = weight.clone().requires_grad_(), b = bias.clone().requires_grad_();
  auto y = dm::fused_layer_norm(x, w, b, 1e-5);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  (y * upstream.to(torch::kBFloat16)).sum().backward();
  return {y.detach(), x.grad(), w.grad(), b.grad()};
}

double relative_error(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a.to(torch::kFloat64) - ref).abs().max() / ref.abs().max()).item<double>();
}

}  // namespace

TEST(FusedLayerNorm, MatchesLayerNormInFloat64WithAllGradients) {
  torch::manual_seed(0);
  // The transformer blocks' (B, HW, C) tokens at 128 and 64 channels, a transposed (non-contiguous) view
  // as the UNet passes it, and an odd width (the rows' scalar tails). An offset mean, as activations have.
  for (const auto& sizes : {std::vector<int64_t>{4, 256, 128}, std::vector<int64_t>{3, 64, 64},
                            std::vector<int64_t>{2, 5, 37}}) {
    auto x = (torch::randn(sizes) * 2 + 0.5).to(torch::kBFloat16);
    auto weight = torch::randn({sizes.back()}) * 0.5 + 1, bias = torch::randn({sizes.back()}) * 0.1;
    auto upstream = torch::randn(sizes).to(torch::kBFloat16).to(torch::kFloat32);
    const auto want = reference(x, weight, bias, upstream);
    const auto got = fused(x, weight, bias, upstream);
    std::printf("fused layer norm %s: relative error y %.2e dx %.2e dweight %.2e dbias %.2e\n",
                c10::str(x.sizes()).c_str(), relative_error(got.y, want.y), relative_error(got.x, want.x),
                relative_error(got.weight, want.weight), relative_error(got.bias, want.bias));
    EXPECT_LT(relative_error(got.y, want.y), 4e-3);  // one bf16 rounding of the output
    EXPECT_LT(relative_error(got.x, want.x), 4e-3);  // one bf16 rounding of dx
    EXPECT_LT(relative_error(got.weight, want.weight), 1e-5);  // float32 sums of exact products
    EXPECT_LT(relative_error(got.bias, want.bias), 1e-5);
  }
  // A strided input reads the same values as its contiguous copy.
  auto x = torch::randn({2, 32, 16}).to(torch::kBFloat16);
  auto w = torch::ones({32}), b = torch::zeros({32});
  EXPECT_TRUE(torch::equal(dm::fused_layer_norm(x.transpose(1, 2), w, b, 1e-5),
                           dm::fused_layer_norm(x.transpose(1, 2).contiguous(), w, b, 1e-5)));
}

TEST(FusedLayerNorm, DeterministicWhateverTheThreadCount) {
  torch::manual_seed(1);
  auto x = torch::randn({8, 300, 64}).to(torch::kBFloat16);
  auto weight = torch::randn({64}), bias = torch::randn({64});
  auto upstream = torch::randn({8, 300, 64});
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const auto a = fused(x, weight, bias, upstream);
  torch::set_num_threads(2);
  const auto b = fused(x, weight, bias, upstream);
  torch::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(a.y, b.y) && torch::equal(a.x, b.x));
  EXPECT_TRUE(torch::equal(a.weight, b.weight) && torch::equal(a.bias, b.bias));
}

TEST(FusedLayerNorm, NaNMakesItsRowNaN) {
  auto x = torch::randn({3, 16}).to(torch::kBFloat16);
  x[1][4] = std::numeric_limits<float>::quiet_NaN();
  auto y = dm::fused_layer_norm(x, torch::ones({16}), torch::zeros({16}), 1e-5);
  EXPECT_TRUE(torch::isnan(y[1]).all().item<bool>());
  EXPECT_FALSE(torch::isnan(y[0]).any().item<bool>() || torch::isnan(y[2]).any().item<bool>());
}

TEST(FusedLayerNorm, Float32AndTheSwitchTakeTheEagerOps) {
  torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({16}));
  auto x = torch::randn({2, 5, 16});
  EXPECT_TRUE(torch::equal(dm::layer_norm_fp32(*norm, x), norm(x)));  // float32: the module itself
  auto xb = x.to(torch::kBFloat16);
  const auto fused_value = dm::layer_norm_fp32(*norm, xb);
  dm::set_fused_group_norm_silu_enabled(false);
  const auto eager = dm::layer_norm_fp32(*norm, xb);
  dm::set_fused_group_norm_silu_enabled(true);
  EXPECT_TRUE(torch::equal(eager, norm(xb.to(torch::kFloat32)).to(torch::kBFloat16)));
  // The same values to bf16 rounding of different float32 summation orders.
  EXPECT_LE((fused_value.to(torch::kFloat32) - eager.to(torch::kFloat32)).abs().max().item<float>(), 0.02f);
  EXPECT_THROW(dm::fused_layer_norm(x, torch::ones({16}), torch::zeros({16}), 1e-5), std::invalid_argument);
  EXPECT_THROW(dm::fused_layer_norm(xb, torch::ones({15}), torch::zeros({16}), 1e-5), std::invalid_argument);
}
