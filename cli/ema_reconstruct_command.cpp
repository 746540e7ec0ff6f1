#include "cli/ema_reconstruct_command.h"

#include "distributed/weights_agreement.h"
#include "model/unet.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/ema_snapshots.h"
#include "trainer/model_options.h"
#include "trainer/power_ema.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <stdexcept>

namespace difftrain::cli {
namespace fs = std::filesystem;

std::unique_ptr<EmaReconstructCommand> add_ema_reconstruct_command(CLI::App& app) {
  auto command = std::make_unique<EmaReconstructCommand>();
  command->app = app.add_subcommand(
      "ema-reconstruct", "EDM2 post-hoc EMA: the EMA of any width from a run's train.ema_profiles snapshots");
  command->app->add_option("--checkpoint", command->checkpoint, "checkpoint or run directory (its newest checkpoint)")
      ->required();
  command->app->add_option("--sigma-rel", command->sigma_rel, "relative EMA width, e.g. 0.05 (EDM2), in (0, 0.2887)")
      ->required();
  command->app->add_option("--out", command->out, "output run directory: <out>/checkpoints/step-N")->required();
  return command;
}

int run_ema_reconstruct_command(const EmaReconstructCommand& command) {
  const double gamma = sigma_rel_to_gamma(command.sigma_rel);  // checks the range, naming the value
  const std::string dir = resolve_checkpoint(command.checkpoint);
  const fs::path run_dir = fs::path(dir).parent_path().parent_path();
  const Config config = parse_saved_config(read_checkpoint_config(dir), dir + "/config.yaml", nullptr, nullptr);
  const auto& widths = config.train.ema_profiles;
  if (widths.empty())
    throw std::runtime_error("checkpoint '" + dir + "' was trained without train.ema_profiles: there are no EMA "
                             "profiles to reconstruct from (train with e.g. train.ema_profiles=[0.05,0.1])");
  const int64_t step = read_training_state(dir).step;
  if (fs::exists(fs::path(command.out) / "checkpoints" / checkpoint_name(step)) &&
      fs::equivalent(fs::path(command.out), run_dir))
    throw std::runtime_error("--out " + command.out + " is the run itself: its checkpoint would be replaced");

  // Every stored average: (where it is, step, gamma) -> a loader into a network.
  struct Source {
    ProfileSnapshot profile;
    std::function<void(torch::nn::Module&)> load;
    std::string what;
  };
  std::vector<Source> sources;
  const auto snapshots = list_ema_snapshots(run_dir.string(), step - 1);
  for (const auto& s : snapshots)
    for (size_t k = 0; k < s.gamma.size(); ++k)
      sources.push_back({{s.step, s.gamma[k]}, [s, k](torch::nn::Module& m) { load_ema_snapshot_profile(s, k, m); },
                         s.dir + " profile " + std::to_string(k)});
  for (size_t k = 0; k < widths.size(); ++k)
    sources.push_back({{step, sigma_rel_to_gamma(widths[k])},
                       [dir, k](torch::nn::Module& m) { load_checkpoint_module(dir, ema_profile_file(k), m); },
                       dir + " " + ema_profile_file(k)});
  std::vector<ProfileSnapshot> profiles;
  for (const auto& s : sources) profiles.push_back(s.profile);
  const Reconstruction r = reconstruct_profile(profiles, step, gamma);

  // sum_i c_i theta_i in float64, parameter by parameter; buffers are the checkpoint EMA's.
  const auto options = unet_options_from(config.model, model_input_size(config), model_input_channels(config));
  model::UNet result(options), scratch(options);
  load_ema_weights(dir, *result);
  std::vector<torch::Tensor> sums;
  for (const auto& p : result->parameters()) sums.push_back(torch::zeros(p.sizes(), torch::kFloat64));
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < sources.size(); ++i) {
    sources[i].load(*scratch);
    const auto params = scratch->parameters();
    for (size_t j = 0; j < params.size(); ++j) sums[j].add_(params[j].to(torch::kFloat64), r.coefficients[i]);
  }
  auto out_params = result->parameters();
  for (size_t j = 0; j < out_params.size(); ++j) out_params[j].copy_(sums[j]);

  const std::string written = write_checkpoint_with_ema(dir, command.out, *result);
  std::printf("EMA sigma_rel %g (gamma %.4f) at step %lld from %zu stored profile(s) of %zu snapshot(s) and the "
              "checkpoint; profile fit error %.2e (L2, relative)\n",
              command.sigma_rel, gamma, static_cast<long long>(step), sources.size(), snapshots.size(),
              r.relative_error);
  std::printf("checkpoint %s\nema_fingerprint %016llx\n", written.c_str(),
              static_cast<unsigned long long>(weights_fingerprint(*result)));
  if (r.relative_error > 0.05)
    spdlog::warn("the stored profiles fit sigma_rel {} poorly (relative error {:.3f}): widths far from "
                 "train.ema_profiles' or few snapshots (train.ema_snapshot_every) make it an approximation",
                 command.sigma_rel, r.relative_error);
  return 0;
}

}  // namespace difftrain::cli
