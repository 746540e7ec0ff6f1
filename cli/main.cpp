// difftrain command line: a thin layer over the libraries.
//   make-data      write the built-in synthetic captioned-shapes shards
//   train          train (under mpirun/srun: one rank per process)
//   sample         evaluation sampling from a checkpoint
//   colour-match   fraction of sampled images showing their prompt's colour
//   export         a checkpoint's EMA model as a TorchScript denoiser
//   checkpoint-info  step, images seen and weight fingerprints of a checkpoint
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <optional>

#include "data/synthetic_shapes.h"
#include "eval/colour_match.h"
#include "eval/denoiser_source.h"
#include "eval/sample_job.h"
#include "model/unet.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/mpi_session.h"
#include "trainer/trainer.h"

namespace {

using namespace difftrain;

int g_rank = 0, g_world = 1;

[[noreturn]] void fail(const std::string& message) {
  if (g_world > 1) std::fprintf(stderr, "difftrain: error [rank %d]: %s\n", g_rank, message.c_str());
  else std::fprintf(stderr, "difftrain: error: %s\n", message.c_str());
  std::fflush(stderr);
  MpiSession::abort_job(1);
}

int run_train(int argc, char** argv, const std::string& config_path, const std::vector<std::string>& overrides) {
  MpiSession session(&argc, &argv);
  g_rank = session.rank(), g_world = session.world_size();
  if (g_rank != 0) spdlog::set_level(spdlog::level::warn);
  // Failures are reported while MPI is still up, so the abort reaches every rank.
  try {
    const Config config = load_config(config_path, overrides);
    train(config, session);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

int run_colour_match(const std::string& manifest, const std::vector<double>& guidance) {
  std::vector<std::optional<double>> filters;
  for (double w : guidance) filters.emplace_back(w);
  if (filters.empty()) filters.emplace_back(std::nullopt);
  for (const auto& f : filters) {
    const auto r = eval::colour_match(manifest, f);
    std::printf("colour match%s: %lld/%lld = %.3f\n",
                f ? (" at guidance " + std::to_string(*f).substr(0, 4)).c_str() : "",
                static_cast<long long>(r.matched), static_cast<long long>(r.total), r.fraction);
  }
  return 0;
}

int run_checkpoint_info(const std::string& path) {
  const std::string dir = resolve_checkpoint(path);
  const auto state = read_training_state(dir);
  const Config config = parse_config_text(read_checkpoint_config(dir), dir + "/config.yaml", {});
  model::UNet model(model::unet_options_from(config.model, config.data.image_size));
  load_ema_weights(dir, *model);
  const uint64_t ema_fp = weights_fingerprint(*model);
  std::printf("checkpoint %s\nstep %lld\nimages_seen %lld\nema_fingerprint %016llx\n", dir.c_str(),
              static_cast<long long>(state.step), static_cast<long long>(state.images_seen),
              static_cast<unsigned long long>(ema_fp));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"difftrain: train and evaluate text-conditioned diffusion models"};
  app.require_subcommand(1);

  auto* make_data = app.add_subcommand("make-data", "write the built-in synthetic captioned-shapes dataset");
  std::string data_out;
  data::SyntheticSpec spec;
  make_data->add_option("--out", data_out, "shard directory")->required();
  make_data->add_option("--count", spec.count, "number of images")->check(CLI::PositiveNumber);
  make_data->add_option("--image-size", spec.image_size, "image side in pixels")->check(CLI::Range(8, 1024));
  make_data->add_option("--shard-size", spec.shard_size, "images per shard")->check(CLI::PositiveNumber);
  make_data->add_option("--seed", spec.seed, "random seed");

  auto* train = app.add_subcommand("train", "train a model (one process per rank under mpirun/srun)");
  std::string config_path;
  std::vector<std::string> overrides;
  train->add_option("--config", config_path, "YAML config (configs/); omitted = built-in defaults");
  train->add_option("overrides", overrides, "key.path=value overrides, e.g. train.max_steps=100");

  auto* sample = app.add_subcommand("sample", "sample images from a checkpoint's EMA weights");
  eval::SampleOptions so;
  bool synthetic_prompts = false;
  auto* from_checkpoint = sample->add_option("--checkpoint", so.checkpoint, "checkpoint directory or run directory");
  auto* from_model = sample->add_option("--model", so.model_file, "TorchScript denoiser (docs/EVALUATION.md)");
  from_checkpoint->excludes(from_model);
  sample->add_option("--image-size", so.image_size, "image side, for TorchScript files without image_shape");
  sample->add_option("--max-tokens", so.max_tokens, "token length, for TorchScript files without max_tokens");
  sample->add_option("--out", so.out_dir, "output directory")->required();
  sample->add_option("--prompt", so.prompts, "a prompt (repeatable)");
  sample->add_flag("--synthetic-prompts", synthetic_prompts, "every colour x shape of the built-in dataset");
  sample->add_option("--sampler", so.sampler, "ddpm (all T steps) or ddim")->check(CLI::IsMember({"ddpm", "ddim"}));
  sample->add_option("--steps", so.steps, "ddim steps")->check(CLI::PositiveNumber);
  sample->add_option("--eta", so.eta, "ddim eta in [0, 1]")->check(CLI::Range(0.0, 1.0));
  sample->add_option("--spacing", so.spacing, "timestep spacing")
      ->check(CLI::IsMember({"leading", "trailing", "linspace"}));
  sample->add_option("--guidance", so.guidance, "guidance scale(s) w: 1 = none, 0 = unconditional");
  sample->add_option("--images-per-prompt", so.images_per_prompt, "images per prompt")->check(CLI::PositiveNumber);
  sample->add_option("--seed", so.seed, "base seed; image i uses seed + i");
  sample->add_option("--batch-size", so.batch_size, "images per forward pass")->check(CLI::PositiveNumber);
  sample->add_option("--threads", so.threads, "torch threads")->check(CLI::PositiveNumber);
  sample->add_flag("!--no-clip", so.clip_x0, "do not clip the predicted x0 to [-1, 1]");

  auto* colour = app.add_subcommand("colour-match", "fraction of sampled images whose colour matches the prompt");
  std::string manifest;
  std::vector<double> colour_guidance;
  colour->add_option("--manifest", manifest, "manifest.jsonl written by sample")->required();
  colour->add_option("--guidance", colour_guidance, "report these guidance scales separately");

  auto* export_cmd = app.add_subcommand("export", "write a checkpoint's EMA model as a TorchScript denoiser");
  std::string export_checkpoint, export_out;
  export_cmd->add_option("--checkpoint", export_checkpoint, "checkpoint or run directory")->required();
  export_cmd->add_option("--out", export_out, "output .pt file")->required();

  auto* info = app.add_subcommand("checkpoint-info", "print a checkpoint's step and weight fingerprint");
  std::string info_path;
  info->add_option("path", info_path, "checkpoint or run directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*make_data) {
      const auto paths = data::write_synthetic_shards(data_out, spec);
      std::printf("%zu shards in %s\n", paths.size(), data_out.c_str());
      return 0;
    }
    if (*train) return run_train(argc, argv, config_path, overrides);
    if (*sample) {
      if (synthetic_prompts) {
        auto p = eval::synthetic_prompts();
        so.prompts.insert(so.prompts.end(), p.begin(), p.end());
      }
      const auto result = eval::run_sample_job(so);
      std::printf("%lld images, manifest %s\n", static_cast<long long>(result.images), result.manifest.c_str());
      for (const auto& g : result.grids) std::printf("grid %s\n", g.c_str());
      return 0;
    }
    if (*colour) return run_colour_match(manifest, colour_guidance);
    if (*export_cmd) {
      eval::export_denoiser(export_checkpoint, export_out);
      std::printf("TorchScript denoiser written to %s\n", export_out.c_str());
      return 0;
    }
    if (*info) return run_checkpoint_info(info_path);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
