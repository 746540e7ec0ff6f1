// model/batched_matmul: oneDNN's batched matmul against torch::matmul (values and
// gradients, every operand layout attention produces, heads read in place and the
// output written heads-interleaved), bfloat16 against float64 of the rounded operands,
// and the cases it must leave to torch::matmul (broadcasting).
#include <gtest/gtest.h>

#include <cmath>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "model/batched_matmul.h"

namespace {

using difftrain::model::batched_matmul;

// Relative agreement to float32 summation order.
void expect_close(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double scale = want.abs().max().item<double>() + 1e-12;
  EXPECT_LT((got - want).abs().max().item<double>() / scale, 2e-6) << what;
}

TEST(BatchedMatmul, BuiltWithOneDnnHere) {
  // The CI machine builds with Debian's libdnnl-dev: the fast path must be what runs.
  EXPECT_TRUE(difftrain::model::onednn_matmul_enabled());
}

TEST(BatchedMatmul, ValuesAndGradientsEqualTorchMatmulForEveryLayout) {
  torch::manual_seed(0);
  struct Case { std::vector<int64_t> a, b; bool transpose_a, transpose_b; };
  const std::vector<Case> cases = {
      {{6, 4, 17, 16}, {6, 4, 16, 9}, false, false},   // scores-like, 4-D
      {{6, 4, 17, 9}, {6, 4, 9, 16}, false, true},     // k.transpose(-1, -2) operand
      {{5, 1, 1}, {5, 1, 7}, true, false},             // size-1 dimensions
      {{3, 64, 16}, {3, 16, 64}, true, true},          // both transposed views
      {{2, 3, 5, 8}, {2, 3, 8, 4}, false, false},
  };
  for (const auto& c : cases) {
    auto make = [](std::vector<int64_t> shape, bool transpose) {
      if (transpose) std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
      auto t = torch::randn(shape);
      return transpose ? t.transpose(-1, -2) : t;
    };
    auto a = make(c.a, c.transpose_a).requires_grad_(!c.transpose_a);
    auto b = make(c.b, c.transpose_b).requires_grad_(true);
    auto a_ref = a.detach().clone().requires_grad_(a.requires_grad());
    auto b_ref = b.detach().clone().requires_grad_(true);
    auto out = batched_matmul(a, b);
    auto ref = torch::matmul(a_ref, b_ref);
    expect_close(out, ref, "forward");
    auto grad = torch::randn_like(ref);
    out.backward(grad);
    ref.backward(grad);
    if (a.requires_grad()) expect_close(a.grad(), a_ref.grad(), "grad a");
    expect_close(b.grad(), b_ref.grad(), "grad b");
  }
}

TEST(BatchedMatmul, ScaleInsideTheProductEqualsMultiplyingAfterwards) {
  torch::manual_seed(5);
  const double scale = 1.0 / std::sqrt(32.0);
  auto q = torch::randn({3, 4, 9, 32}).requires_grad_();
  auto k = torch::randn({3, 4, 7, 32}).requires_grad_();
  auto q_ref = q.detach().clone().requires_grad_();
  auto k_ref = k.detach().clone().requires_grad_();
  auto out = batched_matmul(q, k.transpose(-1, -2), scale);
  auto ref = torch::matmul(q_ref, k_ref.transpose(-1, -2)) * scale;
  // Forward: the float32 product scaled once either way, so equal to the bit.
  EXPECT_TRUE(torch::equal(out, batched_matmul(q.detach(), k.detach().transpose(-1, -2)) * scale));
  expect_close(out, ref, "scaled forward");
  auto grad = torch::randn_like(ref);
  out.backward(grad);
  ref.backward(grad);
  expect_close(q.grad(), q_ref.grad(), "scaled grad q");
  expect_close(k.grad(), k_ref.grad(), "scaled grad k");
}

// bf16 operands: float32 accumulation of exact products, then one rounding (to bf16, or none for a
// float32 result), against float64 of the same bf16 values.
TEST(BatchedMatmul, Bfloat16ProductsMatchFloat64OfTheRoundedOperands) {
  torch::manual_seed(6);
  const double scale = 1.0 / std::sqrt(32.0);
  auto q = torch::randn({3, 4, 9, 32}).to(torch::kBFloat16);
  auto k = torch::randn({3, 4, 7, 32}).to(torch::kBFloat16);
  const auto want = torch::matmul(q.to(torch::kDouble), k.to(torch::kDouble).transpose(-1, -2)) * scale;
  auto relative = [&](const torch::Tensor& got) {
    return ((got.to(torch::kDouble) - want).abs().max() / want.abs().max()).item<double>();
  };
  const auto rounded = batched_matmul(q, k.transpose(-1, -2), scale);
  const auto exact = batched_matmul(q, k.transpose(-1, -2), scale, {torch::kFloat32});
  EXPECT_EQ(rounded.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(exact.scalar_type(), torch::kFloat32);
  EXPECT_LT(relative(rounded), 4e-3);  // half a bf16 ulp is 2^-9
  EXPECT_LT(relative(exact), 1e-6);
}

// Attention's layout: q, k, v as (B, heads, N, d) views of (B, N, heads·d) projections, the
// output heads-interleaved; values and the projections' gradients equal the contiguous computation.
TEST(BatchedMatmul, HeadViewsAreReadInPlaceAndTheOutputIsHeadsInterleaved) {
  torch::manual_seed(7);
  const int64_t B = 3, N = 10, M = 6, H = 4, d = 8;
  auto q_proj = torch::randn({B, N, H * d}).requires_grad_();
  auto kv_proj = torch::randn({B, M, 2 * H * d}).requires_grad_();
  auto q_ref = q_proj.detach().clone().requires_grad_();
  auto kv_ref = kv_proj.detach().clone().requires_grad_();
  auto heads = [&](const torch::Tensor& t) { return t.unflatten(2, {H, d}).transpose(1, 2); };
  auto attend = [&](const torch::Tensor& qp, const torch::Tensor& kvp, bool ours) {
    auto q = heads(qp), k = heads(kvp.narrow(2, 0, H * d)), v = heads(kvp.narrow(2, H * d, H * d));
    if (!ours) q = q.contiguous(), k = k.contiguous(), v = v.contiguous();
    auto scores = ours ? batched_matmul(q, k.transpose(-1, -2), 0.25, {torch::kFloat32})
                       : torch::matmul(q, k.transpose(-1, -2)) * 0.25;
    auto weights = torch::softmax(scores, -1);
    auto out = ours ? batched_matmul(weights, v, 1.0, {std::nullopt, true}) : torch::matmul(weights, v);
    return out.transpose(1, 2).flatten(2);  // (B, N, H·d)
  };
  auto out = attend(q_proj, kv_proj, true);
  auto ref = attend(q_ref, kv_ref, false);
  expect_close(out, ref, "attention");
  EXPECT_TRUE(out.is_contiguous());  // heads-interleaved: the flatten above was a view
  auto grad = torch::randn_like(ref);
  out.backward(grad);
  ref.backward(grad);
  expect_close(q_proj.grad(), q_ref.grad(), "grad q");
  expect_close(kv_proj.grad(), kv_ref.grad(), "grad k, v");
}

TEST(BatchedMatmul, NonContiguousBatchesAreCopiedNotMisread) {
  torch::manual_seed(1);
  auto big = torch::randn({4, 6, 10});
  auto a = big.slice(2, 1, 9);  // rows of 10, 8 used: neither row- nor column-major packed
  auto b = torch::randn({4, 8, 3});
  expect_close(batched_matmul(a, b), torch::matmul(a, b), "strided rows");
  auto every_other = torch::randn({8, 5, 8}).slice(0, 0, 8, 2);  // batch stride twice the matrix
  expect_close(batched_matmul(every_other, b), torch::matmul(every_other, b), "strided batches");
}

TEST(BatchedMatmul, NoGradModeAndInferenceModeGiveTheSameValues) {
  torch::manual_seed(2);
  auto a = torch::randn({8, 64, 16});
  auto b = torch::randn({8, 16, 64});
  const auto want = torch::matmul(a, b);
  {
    torch::NoGradGuard no_grad;
    expect_close(batched_matmul(a, b), want, "no_grad");
  }
  {
    c10::InferenceMode inference;
    expect_close(batched_matmul(a, b), want, "inference mode");
  }
}

TEST(BatchedMatmul, AutocastCastsLikeTorchMatmulAndBroadcastingIsTorchs) {
  torch::manual_seed(3);
  auto a = torch::randn({2, 3, 4, 5});
  auto b = torch::randn({2, 3, 5, 6});
  // Autocast: float32 operands are cast to bfloat16 first, as torch::matmul's autocast does.
  at::autocast::set_cpu_enabled(true);
  auto under_autocast = batched_matmul(a, b);
  auto want = torch::matmul(a, b);
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  EXPECT_EQ(under_autocast.scalar_type(), want.scalar_type());
  EXPECT_LT((under_autocast.to(torch::kFloat) - want.to(torch::kFloat)).abs().max().item<double>(),
            8e-3 * want.abs().max().item<double>());  // one bf16 ulp: two roundings of the same sum
  auto expanded = torch::randn({5, 6}).expand({2, 3, 5, 6});  // equal sizes, batch stride 0: copied
  expect_close(batched_matmul(a, expanded), torch::matmul(a, expanded), "expanded batches");
  auto mismatch = torch::randn({1, 3, 5, 6});  // broadcast batch: torch::matmul's rule
  EXPECT_TRUE(torch::equal(batched_matmul(a, mismatch), torch::matmul(a, mismatch)));
}

}  // namespace
