// GroupNorm (+ scale/shift) + SiLU on a bf16 activation (as under autocast), forward and backward:
// model/group_norm_silu's fused kernel against the eager ops it replaces (a cast to float32, group_norm,
// the scale/shift, silu, and their backward), interleaved in one run; prints a markdown table
// (issue 12's lever). Shapes: the 32 px, base-64 UNet's ResBlock norms at batch 32.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>

#include "model/group_norm_silu.h"

namespace {

double seconds_per_call(const std::function<void()>& call, int repeats) {
  for (int i = 0; i < 3; ++i) call();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / repeats;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GroupNorm + SiLU on bf16: fused kernel against the eager ops"};
  int threads = 1, repeats = 20, rounds = 3;
  app.add_option("--threads", threads);
  app.add_option("--repeats", repeats);
  app.add_option("--rounds", rounds);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  struct Shape { const char* name; int64_t batch, channels, side; bool scale_shift; };
  const Shape shapes[] = {{"64 ch, 32x32, scale/shift", 32, 64, 32, true},
                          {"128 ch, 16x16, scale/shift", 32, 128, 16, true},
                          {"192 ch, 16x16 (skip concat), no scale/shift", 32, 192, 16, false},
                          {"128 ch, 8x8, scale/shift", 32, 128, 8, true}};
  std::printf("| bf16 activation, batch 32, forward + backward | eager ms | fused ms | ratio |\n|---|---|---|---|\n");
  for (const auto& s : shapes) {
    torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(8, s.channels));
    auto x = torch::randn({s.batch, s.channels, s.side, s.side}).to(torch::kBFloat16).requires_grad_();
    torch::Tensor scale, shift;
    if (s.scale_shift) {
      scale = (torch::randn({s.batch, s.channels, 1, 1}) * 0.1).requires_grad_();
      shift = (torch::randn({s.batch, s.channels, 1, 1}) * 0.1).requires_grad_();
    }
    auto upstream = torch::randn({s.batch, s.channels, s.side, s.side});
    auto step = [&](bool fused) {
      difftrain::model::set_fused_group_norm_silu_enabled(fused);
      auto y = difftrain::model::group_norm_silu(*norm, x, scale, shift);
      y.backward(upstream);
    };
    double best_eager = 1e30, best_fused = 1e30;
    for (int r = 0; r < rounds; ++r) {  // interleaved
      best_eager = std::min(best_eager, seconds_per_call([&] { step(false); }, repeats));
      best_fused = std::min(best_fused, seconds_per_call([&] { step(true); }, repeats));
    }
    std::printf("| %s | %.3f | %.3f | %.2f |\n", s.name, best_eager * 1e3, best_fused * 1e3, best_eager / best_fused);
  }
  return 0;
}
