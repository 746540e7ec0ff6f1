// Sampling throughput, measured against comparators in the same run:
//  1. images/s per sampler at (nearly) equal NFE, as a ratio to DDIM;
//  2. classifier-free guidance as one batched forward of 2B vs two forwards of B.
// Usage: bench_sampling [--config configs/default.yaml] [--batch 32] [--nfe 20] [--repeats 3] [--threads 1]
// The model has the config's architecture with random weights: speed does not depend on the values.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "diffusion/guidance.h"
#include "diffusion/sampler_registry.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "trainer/batch_tensors.h"
#include "trainer/config.h"
#include "trainer/model_options.h"

using namespace difftrain;
using Clock = std::chrono::steady_clock;

namespace {

// Best of `repeats` (least disturbed by other load), in seconds.
template <class F>
double best_seconds(int repeats, F&& run) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

// The step count whose NFE comes closest to `nfe` (spacings that round to integer
// timesteps can merge steps, so NFE is searched, not computed).
diffusion::SamplerSpec spec_for(const std::string& name, int64_t nfe, const diffusion::NoiseSchedule& schedule) {
  auto best = diffusion::evaluation_spec(name, 1);
  int64_t best_gap = 1 << 30;
  for (int64_t steps = 1; steps <= std::min<int64_t>(schedule.timesteps, 4 * nfe); ++steps) {
    const auto spec = diffusion::evaluation_spec(name, steps);
    const int64_t gap = std::abs(diffusion::sampler_nfe(spec, schedule) - nfe);
    if (gap < best_gap) best = spec, best_gap = gap;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"difftrain sampling benchmark"};
  std::string config_path = "configs/default.yaml";
  int64_t batch = 32, nfe = 20;
  int repeats = 3, threads = 1;
  double guidance = 3.0;
  app.add_option("--config", config_path, "model architecture");
  app.add_option("--batch", batch, "images per batch");
  app.add_option("--nfe", nfe, "target network evaluations per image");
  app.add_option("--repeats", repeats, "timed repeats (best is kept)");
  app.add_option("--threads", threads, "torch threads");
  app.add_option("--guidance", guidance, "guidance scale");
  CLI11_PARSE(app, argc, argv);

  torch::set_num_threads(threads);
  torch::manual_seed(0);
  const Config config = load_config(config_path, {});
  model::UNet net(unet_options_from(config.model, model_input_size(config), model_input_channels(config)));
  net->eval();
  torch::NoGradGuard no_grad;
  const auto schedule = diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps,
                                                config.diffusion.zero_terminal_snr, config.diffusion.flow_shift);
  const int64_t H = config.data.image_size;
  std::vector<std::string> captions(batch, "a red circle");
  auto tokens = tokenize_batch(captions, config.model.max_tokens);
  auto null_tokens = torch::full_like(tokens, model::kPadToken);
  diffusion::Network network = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& tok) {
    return net->forward(x, t, tok);
  };
  std::vector<uint64_t> seeds(batch);
  for (int64_t i = 0; i < batch; ++i) seeds[i] = i;

  std::printf("# sampling benchmark: %s, %lldx%lld images, batch %lld, %d thread(s), guidance %.1f\n",
              config_path.c_str(), static_cast<long long>(H), static_cast<long long>(H), static_cast<long long>(batch),
              threads, guidance);
  std::printf("\n## samplers at about %lld NFE (ratio: images/s relative to DDIM in this run)\n\n", static_cast<long long>(nfe));
  std::printf("| sampler | steps | NFE | images/s | ratio to DDIM |\n|---|---|---|---|---|\n");
  auto guided = diffusion::guided_eps_model(network, tokens, null_tokens, guidance, diffusion::Prediction::kEps, schedule);
  double ddim_rate = 0;
  for (const auto& name : {"ddim", "ddpm-respaced", "dpm-solver++2m", "dpm-solver-2", "dpm-solver-3", "euler", "heun"}) {
    const auto spec = spec_for(name, nfe, schedule);
    const int64_t n = diffusion::sampler_nfe(spec, schedule);
    const double seconds = best_seconds(repeats, [&] {
      diffusion::PerImageNoise noise(seeds);
      diffusion::run_sampler(spec, guided, noise.randn({config.data.channels, H, H}, torch::kFloat32), schedule, noise);
    });
    const double rate = static_cast<double>(batch) / seconds;
    if (ddim_rate == 0) ddim_rate = rate;
    std::printf("| %s | %lld | %lld | %.1f | %.2f |\n", name, static_cast<long long>(spec.steps),
                static_cast<long long>(n), rate, rate / ddim_rate);
  }

  // Guidance: the library's one batched forward of 2B against two forwards of B.
  auto two_forwards = [&](const torch::Tensor& x, const torch::Tensor& t) {
    auto cond = network(x, t, tokens), uncond = network(x, t, null_tokens);
    return uncond + guidance * (cond - uncond);
  };
  const auto spec = diffusion::evaluation_spec("ddim", nfe);
  auto time_with = [&](const diffusion::EpsModel& model) {
    return best_seconds(repeats, [&] {
      diffusion::PerImageNoise noise(seeds);
      diffusion::run_sampler(spec, model, noise.randn({config.data.channels, H, H}, torch::kFloat32), schedule, noise);
    });
  };
  const double batched = time_with(guided), separate = time_with(two_forwards);
  std::printf("\n## classifier-free guidance, DDIM %lld steps\n\n", static_cast<long long>(nfe));
  std::printf("| variant | images/s | ratio to two forwards |\n|---|---|---|\n");
  std::printf("| one batched forward (2B) | %.1f | %.2f |\n", batch / batched, separate / batched);
  std::printf("| two forwards (B + B) | %.1f | 1.00 |\n", batch / separate);
  return 0;
}
