// model/batched_matmul: oneDNN's batched matmul against torch::matmul (values and
// gradients, every operand layout attention produces), and the cases it must leave
// to torch::matmul (autocast, bfloat16, broadcasting, tracing).
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
  // Outside the oneDNN path (bfloat16) the scale is a multiplication after torch::matmul.
  auto qb = q.detach().to(torch::kBFloat16), kb = k.detach().to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(batched_matmul(qb, kb.transpose(-1, -2), scale), torch::matmul(qb, kb.transpose(-1, -2)) * scale));
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

TEST(BatchedMatmul, LeavesAutocastBfloat16AndBroadcastingToTorch) {
  torch::manual_seed(3);
  auto a = torch::randn({2, 3, 4, 5});
  auto b = torch::randn({2, 3, 5, 6});
  // Autocast: torch::matmul's cast to bfloat16 is part of the function computed.
  at::autocast::set_cpu_enabled(true);
  auto under_autocast = batched_matmul(a, b);
  auto want = torch::matmul(a, b);
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  EXPECT_EQ(under_autocast.scalar_type(), want.scalar_type());
  EXPECT_TRUE(torch::equal(under_autocast, want));
  auto ab = a.to(torch::kBFloat16), bb = b.to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(batched_matmul(ab, bb), torch::matmul(ab, bb)));
  auto expanded = torch::randn({5, 6}).expand({2, 3, 5, 6});  // equal sizes, batch stride 0: copied
  expect_close(batched_matmul(a, expanded), torch::matmul(a, expanded), "expanded batches");
  auto mismatch = torch::randn({1, 3, 5, 6});  // broadcast batch: torch::matmul's rule
  EXPECT_TRUE(torch::equal(batched_matmul(a, mismatch), torch::matmul(a, mismatch)));
}

}  // namespace
