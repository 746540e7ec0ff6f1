#include "cli/autoencoder_command.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <stdexcept>

#include "cli/fail.h"
#include "distributed/mpi_session.h"
#include "trainer/autoencoder_export.h"
#include "trainer/autoencoder_trainer.h"
#include "trainer/config.h"

namespace difftrain::cli {
namespace {

int run_train(int argc, char** argv, const AutoencoderCommand& command) {
  MpiSession session(&argc, &argv);
  set_error_rank(session.rank(), session.world_size());
  if (session.rank() != 0) spdlog::set_level(spdlog::level::warn);
  // Failures are reported while MPI is still up, so the abort reaches every rank.
  try {
    std::vector<std::string> overrides = command.overrides;
    overrides.insert(overrides.end(), command.set_overrides.begin(), command.set_overrides.end());
    train_autoencoder(load_config(command.config_path, overrides), session);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

void check_common(const AutoencoderCommand& command) {
  if (command.batch_size < 1) throw std::invalid_argument("--batch-size " + std::to_string(command.batch_size) + ": expected >= 1");
  if (command.threads < 1 || command.threads > 1024)
    throw std::invalid_argument("--threads " + std::to_string(command.threads) + ": expected 1 to 1024");
  torch::set_num_threads(command.threads);
}

int run_export(const AutoencoderCommand& command) {
  check_common(command);
  AutoencoderExportOptions options;
  options.checkpoint = command.checkpoint;
  options.encoder_path = command.encoder_path;
  options.decoder_path = command.decoder_path;
  options.scale_samples = command.scale_samples;
  options.scale_data = command.data_dir;
  options.batch_size = command.batch_size;
  const auto r = export_autoencoder(options);
  std::printf("autoencoder %s: %lldx%lldx%lld images <-> %lldx%lldx%lld latents (f = %lld)\n", r.checkpoint.c_str(),
              static_cast<long long>(r.image_size), static_cast<long long>(r.image_size),
              static_cast<long long>(r.image_channels), static_cast<long long>(r.image_size / r.downsample_factor),
              static_cast<long long>(r.image_size / r.downsample_factor), static_cast<long long>(r.latent_channels),
              static_cast<long long>(r.downsample_factor));
  std::printf("latents of %lld training images: mean %.6g, std %.6g -> latent_scale %.6g, latent_shift %g\n",
              static_cast<long long>(r.scale_images), r.latent_mean, r.latent_std, r.latent_scale, r.latent_shift);
  std::printf("encoder written to %s\ndecoder written to %s\n", command.encoder_path.c_str(),
              command.decoder_path.c_str());
  return 0;
}

int run_eval(const AutoencoderCommand& command) {
  check_common(command);
  const auto r = evaluate_autoencoder(command.checkpoint, command.data_dir, command.limit, command.batch_size);
  std::printf("autoencoder %s on %s: %lld images\n", r.checkpoint.c_str(), command.data_dir.c_str(),
              static_cast<long long>(r.images));
  std::printf("reconstruction PSNR %.4f dB (mean over images, [0, 1] pixels; decode of the posterior mean)\n",
              r.psnr_db);
  std::printf("%.1f images/s (encode + decode, %d thread(s), batch %lld)\n", r.images_per_second, command.threads,
              static_cast<long long>(command.batch_size));
  return 0;
}

}  // namespace

std::unique_ptr<AutoencoderCommand> add_autoencoder_command(CLI::App& app) {
  auto command = std::make_unique<AutoencoderCommand>();
  auto& c = *command;
  c.app = app.add_subcommand("autoencoder", "the KL autoencoder of latent diffusion: train, export, eval (docs/LATENTS.md)");
  c.app->require_subcommand(1);

  c.train = c.app->add_subcommand("train", "train an autoencoder on the shards' images (one process per rank under mpirun/srun)");
  c.train->add_option("--config", c.config_path, "YAML config (configs/fashion_mnist_autoencoder.yaml); omitted = built-in defaults");
  c.train->add_option("overrides", c.overrides, "key.path=value overrides, e.g. autoencoder.kl_weight=1e-5");
  c.train->add_option("--set", c.set_overrides, "a key.path=value override (repeatable)");

  c.export_files = c.app->add_subcommand("export", "write a checkpoint's EMA encoder and decoder as TorchScript files");
  c.export_files->add_option("--checkpoint", c.checkpoint, "checkpoint or run directory")->required();
  c.export_files->add_option("--encoder", c.encoder_path, "output encoder .pt (images -> latent means)")->required();
  c.export_files->add_option("--decoder", c.decoder_path, "output decoder .pt (latents -> images)")->required();
  c.export_files->add_option("--scale-samples", c.scale_samples,
                             "training images whose latents set latent_scale = 1 / std (default 1000)");
  c.export_files->add_option("--data", c.data_dir, "shards for latent_scale (default: the checkpoint's data.dir)");

  c.eval = c.app->add_subcommand("eval", "reconstruction PSNR and throughput of a checkpoint's EMA autoencoder");
  c.eval->add_option("--checkpoint", c.checkpoint, "checkpoint or run directory")->required();
  c.eval->add_option("--data", c.data_dir, "shard directory")->required();
  c.eval->add_option("--limit", c.limit, "use only the first N images (0: all)");

  for (auto* sub : {c.export_files, c.eval}) {
    sub->add_option("--batch-size", c.batch_size, "images per forward (default 64)");
    sub->add_option("--threads", c.threads, "torch threads (default 1)");
  }
  return command;
}

int run_autoencoder_command(int argc, char** argv, const AutoencoderCommand& command) {
  if (*command.train) return run_train(argc, argv, command);
  if (*command.export_files) return run_export(command);
  if (*command.eval) return run_eval(command);
  return 0;
}

}  // namespace difftrain::cli
