// model/batched_matmul's fused_attention (bf16 attention in one node, softmax fused with its casts,
// model/attention_softmax) against the attention math evaluated in float64 autograd on the same bf16
// operands: output and the gradients of q, k and v, self-attention and masked cross-attention with an
// image whose keys are all masked; repeats bit-identical; and where it must not apply (float32, the switch).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "model/attention.h"
#include "model/batched_matmul.h"

namespace {
namespace dm = difftrain::model;

struct Result {
  torch::Tensor out, dq, dk, dv;
};

// softmax(q kᵀ / sqrt(d)) v over the valid keys, zero for an image without one, in float64.
Result reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& valid,
                 const torch::Tensor& upstream) {
  auto q64 = q.to(torch::kFloat64).requires_grad_(), k64 = k.to(torch::kFloat64).requires_grad_();
  auto v64 = v.to(torch::kFloat64).requires_grad_();
  auto scores = torch::matmul(q64, k64.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  torch::Tensor keep;
  if (valid.defined()) {
    auto mask = valid.unsqueeze(1).unsqueeze(1);  // (B, 1, 1, Nk)
    keep = mask.any(-1, true).to(torch::kFloat64);
    scores = scores.masked_fill(mask.logical_not().logical_and(mask.any(-1, true)),
                                -std::numeric_limits<double>::infinity());
  }
  auto weights = torch::softmax(scores, -1);
  if (keep.defined()) weights = weights * keep;
  auto out = torch::matmul(weights, v64);
  (out * upstream.to(torch::kFloat64)).sum().backward();
  return {out.detach(), q64.grad(), k64.grad(), v64.grad()};
}

Result fused(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
             const torch::Tensor& valid, const torch::Tensor& upstream) {
  auto q = q_in.clone().requires_grad_(), k = k_in.clone().requires_grad_(), v = v_in.clone().requires_grad_();
  EXPECT_TRUE(dm::fused_attention_applies(q, k, v));
  auto out = dm::fused_attention(q, k, v, valid, 1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  // Stored heads-interleaved, (B, Nq, heads, d): the caller's merge of the heads is a view.
  EXPECT_TRUE(out.transpose(1, 2).is_contiguous());
  (out.to(torch::kFloat32) * upstream).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

// Largest error relative to the largest reference value.
double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kFloat64) - want).abs().max() / want.abs().max()).item<double>();
}

}  // namespace

TEST(FusedAttention, MatchesTheAttentionMathInFloat64WithAllGradients) {
  torch::manual_seed(0);
  struct Case {
    int64_t batch, heads, nq, nk, d;
    bool masked;
  };
  // Self-attention at the 32 px model's 16×16 level and 8×8; cross-attention to 25 tokens with padding,
  // and an odd key count (the rows' scalar tails).
  for (const Case c : {Case{2, 4, 256, 256, 32, false}, Case{3, 4, 64, 64, 16, false}, Case{4, 4, 64, 25, 32, true},
                       Case{2, 2, 17, 7, 8, true}}) {
    const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
    // q·kᵀ/sqrt(d) of a few units, so the softmax is neither flat nor one-hot.
    auto q = (torch::randn({c.batch, c.heads, c.nq, c.d}) * 1.5).to(torch::kBFloat16);
    auto k = (torch::randn({c.batch, c.heads, c.nk, c.d}) * 1.5).to(torch::kBFloat16);
    auto v = torch::randn({c.batch, c.heads, c.nk, c.d}, bf16);
    auto upstream = torch::randn({c.batch, c.heads, c.nq, c.d});
    torch::Tensor valid;
    if (c.masked) {
      valid = torch::rand({c.batch, c.nk}) < 0.6;
      valid[0].fill_(false);  // an image with no key attends to nothing
      valid[1][0] = true;
    }
    const auto want = reference(q, k, v, valid, upstream);
    const auto got = fused(q, k, v, valid, upstream);
    SCOPED_TRACE(testing::Message() << "case " << c.batch << "x" << c.heads << "x" << c.nq << "x" << c.nk << "x" << c.d);
    std::printf("fused attention %lldx%lldx%lldx%lldx%lld: relative error out %.2e dq %.2e dk %.2e dv %.2e\n",
                static_cast<long long>(c.batch), static_cast<long long>(c.heads), static_cast<long long>(c.nq),
                static_cast<long long>(c.nk), static_cast<long long>(c.d), relative_error(got.out, want.out),
                relative_error(got.dq, want.dq), relative_error(got.dk, want.dk), relative_error(got.dv, want.dv));
    // The output is rounded to bf16 (2^-8 relative) after the weights were (2^-9 each).
    EXPECT_LT(relative_error(got.out, want.out), 8e-3);
    // Gradients pass through bf16 operands of three products and a bf16 dS: bf16 rounding, not more.
    EXPECT_LT(relative_error(got.dv, want.dv), 1.2e-2);
    EXPECT_LT(relative_error(got.dq, want.dq), 1.2e-2);
    EXPECT_LT(relative_error(got.dk, want.dk), 1.2e-2);
    if (c.masked) {
      EXPECT_EQ(got.out[0].abs().max().item<float>(), 0.0f);
      EXPECT_EQ(got.dq[0].abs().max().item<float>(), 0.0f);
      EXPECT_EQ(got.dk[0].abs().max().item<float>(), 0.0f);
      // Masked keys get no weight, so no gradient reaches their values.
      auto masked_keys = valid[1].logical_not();
      EXPECT_EQ(got.dv[1].index({torch::indexing::Slice(), masked_keys}).abs().max().item<float>(), 0.0f);
    }
  }
}

TEST(FusedAttention, ErrorsAreOfBf16SizeNotOfTheMethod) {
  // The same function in float32 operands through the eager path gives errors of the same size against
  // float64: the fusion adds no error beyond bf16's own.
  torch::manual_seed(1);
  auto q = (torch::randn({2, 4, 64, 16}) * 1.5).to(torch::kBFloat16);
  auto k = (torch::randn({2, 4, 64, 16}) * 1.5).to(torch::kBFloat16);
  auto v = torch::randn({2, 4, 64, 16}).to(torch::kBFloat16);
  auto upstream = torch::randn({2, 4, 64, 16});
  const auto want = reference(q, k, v, {}, upstream);
  const auto got = fused(q, k, v, {}, upstream);
  auto q32 = q.to(torch::kFloat32).requires_grad_();
  auto eager = dm::scaled_dot_product_attention(q32, k.to(torch::kFloat32), v.to(torch::kFloat32), {})
                   .to(torch::kBFloat16);  // the same final rounding
  std::printf("relative error of the output: fused %.2e, eager float32 then rounded %.2e\n",
              relative_error(got.out, want.out), relative_error(eager, want.out));
  EXPECT_LE(relative_error(got.out, want.out), 2.0 * relative_error(eager, want.out) + 1e-3);
}

TEST(FusedAttention, RepeatsAreBitIdentical) {
  torch::manual_seed(2);
  auto q = torch::randn({2, 4, 64, 32}).to(torch::kBFloat16), k = torch::randn({2, 4, 25, 32}).to(torch::kBFloat16);
  auto v = torch::randn({2, 4, 25, 32}).to(torch::kBFloat16);
  auto valid = torch::rand({2, 25}) < 0.5;
  auto upstream = torch::randn({2, 4, 64, 32});
  const auto a = fused(q, k, v, valid, upstream), b = fused(q, k, v, valid, upstream);
  EXPECT_TRUE(torch::equal(a.out, b.out));
  EXPECT_TRUE(torch::equal(a.dq, b.dq) && torch::equal(a.dk, b.dk) && torch::equal(a.dv, b.dv));
  // Without gradients (sampling) the same values.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(dm::fused_attention(q, k, v, valid, 1.0 / std::sqrt(32.0)), a.out));
}

TEST(FusedAttention, NaNScoresMakeTheirRowNaN) {
  auto q = torch::randn({1, 1, 4, 8}).to(torch::kBFloat16), k = torch::randn({1, 1, 6, 8}).to(torch::kBFloat16);
  auto v = torch::randn({1, 1, 6, 8}).to(torch::kBFloat16);
  q[0][0][2][3] = std::numeric_limits<float>::quiet_NaN();
  auto out = dm::fused_attention(q, k, v, {}, 1.0);
  EXPECT_TRUE(torch::isnan(out[0][0][2]).all().item<bool>());
  EXPECT_FALSE(torch::isnan(out[0][0][1]).any().item<bool>());
}

TEST(FusedAttention, Float32AndTheSwitchTakeTheEagerOps) {
  auto q = torch::randn({1, 2, 8, 4}), k = torch::randn({1, 2, 8, 4}), v = torch::randn({1, 2, 8, 4});
  EXPECT_FALSE(dm::fused_attention_applies(q, k, v));
  const auto qb = q.to(torch::kBFloat16), kb = k.to(torch::kBFloat16), vb = v.to(torch::kBFloat16);
  EXPECT_TRUE(dm::fused_attention_applies(qb, kb, vb));
  dm::set_fused_attention_enabled(false);
  EXPECT_FALSE(dm::fused_attention_applies(qb, kb, vb));
  dm::set_fused_attention_enabled(true);
  // Shapes it does not handle are refused, not misread.
  EXPECT_FALSE(dm::fused_attention_applies(qb, kb.narrow(2, 0, 4), vb));
}
