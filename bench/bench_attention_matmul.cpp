// Attention's batched matmuls, forward and backward, through model/batched_matmul
// (oneDNN) against torch::matmul (LibTorch 1.13: one OpenBLAS call per batch entry),
// interleaved in one run; prints a markdown table of the ratio (issue 12's lever).
// Shapes: the default model's attention at batch 32 (16 px: 8×8 and 4×4 positions,
// 64 channels in 4 heads, 24 text tokens) and the 32 px model's 16×16 level.
// A second table: bf16 attention (model/attention.h's scaled_dot_product_attention, the
// matmuls on oneDNN either way) with the fused softmax (model/batched_matmul.h's
// fused_attention) against the eager composition, at the 32 px model's shapes.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "model/attention.h"
#include "model/batched_matmul.h"

namespace {

double seconds_per_call(const std::function<void()>& call, int repeats) {
  for (int i = 0; i < 3; ++i) call();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / repeats;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attention batched matmul: oneDNN against torch::matmul"};
  int threads = 1, repeats = 50, rounds = 3;
  app.add_option("--threads", threads);
  app.add_option("--repeats", repeats);
  app.add_option("--rounds", rounds);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  struct Shape { const char* name; int64_t batch, heads, queries, keys, d; };
  const Shape shapes[] = {{"self, 8x8 positions", 32, 4, 64, 64, 16},
                          {"cross, 8x8 to 24 tokens", 32, 4, 64, 24, 16},
                          {"self, 4x4 positions", 32, 4, 16, 16, 32},
                          {"self, 16x16 positions (32 px model)", 32, 4, 256, 256, 16}};
  std::printf("| attention (batch 32, 4 heads) | torch::matmul ms | oneDNN ms | ratio |\n|---|---|---|---|\n");
  for (const auto& s : shapes) {
    auto q = torch::randn({s.batch, s.heads, s.queries, s.d}).requires_grad_();
    auto k = torch::randn({s.batch, s.heads, s.keys, s.d}).requires_grad_();
    auto v = torch::randn({s.batch, s.heads, s.keys, s.d}).requires_grad_();
    auto step = [&](bool onednn) {
      auto mm = [&](const torch::Tensor& a, const torch::Tensor& b) {
        return onednn ? difftrain::model::batched_matmul(a, b) : torch::matmul(a, b);
      };
      auto scores = mm(q, k.transpose(-1, -2));
      auto out = mm(torch::softmax(scores, -1), v);
      out.sum().backward();
    };
    double best_torch = 1e30, best_onednn = 1e30;
    for (int r = 0; r < rounds; ++r) {  // interleaved
      best_torch = std::min(best_torch, seconds_per_call([&] { step(false); }, repeats));
      best_onednn = std::min(best_onednn, seconds_per_call([&] { step(true); }, repeats));
    }
    std::printf("| %s | %.3f | %.3f | %.2f |\n", s.name, best_torch * 1e3, best_onednn * 1e3, best_torch / best_onednn);
  }
  namespace dm = difftrain::model;
  const Shape bf16_shapes[] = {{"self, 16x16 positions, d = 32", 32, 4, 256, 256, 32},
                               {"cross, 16x16 to 25 tokens (padding masked)", 32, 4, 256, 25, 32},
                               {"self, 8x8 positions, d = 32", 32, 4, 64, 64, 32}};
  std::printf("\n| bf16 attention (batch 32, 4 heads), forward + backward | eager softmax ms | fused ms | ratio |\n"
              "|---|---|---|---|\n");
  for (const auto& s : bf16_shapes) {
    auto q = torch::randn({s.batch, s.heads, s.queries, s.d}).to(torch::kBFloat16).requires_grad_();
    auto k = torch::randn({s.batch, s.heads, s.keys, s.d}).to(torch::kBFloat16).requires_grad_();
    auto v = torch::randn({s.batch, s.heads, s.keys, s.d}).to(torch::kBFloat16).requires_grad_();
    torch::Tensor valid;
    if (s.keys != s.queries) valid = torch::arange(s.keys).lt(20).expand({s.batch, s.keys}).contiguous();
    auto upstream = torch::randn({s.batch, s.heads, s.queries, s.d}).to(torch::kBFloat16);
    auto step = [&](bool fused) {
      dm::set_fused_attention_enabled(fused);
      auto out = dm::scaled_dot_product_attention(q, k, v, valid);
      out.backward(upstream);
    };
    double best_eager = 1e30, best_fused = 1e30;
    for (int r = 0; r < rounds; ++r) {
      best_eager = std::min(best_eager, seconds_per_call([&] { step(false); }, repeats));
      best_fused = std::min(best_fused, seconds_per_call([&] { step(true); }, repeats));
    }
    std::printf("| %s | %.3f | %.3f | %.2f |\n", s.name, best_eager * 1e3, best_fused * 1e3, best_eager / best_fused);
  }
  return 0;
}
