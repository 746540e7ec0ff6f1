#include "trainer/autoencoder_trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>

#include "data/loader.h"
#include "distributed/communicator.h"
#include "distributed/gradient_reducer.h"
#include "distributed/mpi_session.h"
#include "monitoring/metrics.h"
#include "trainer/batch_tensors.h"
#include "trainer/checkpoint.h"
#include "trainer/config_diff.h"
#include "trainer/ema.h"
#include "trainer/fused_adamw.h"
#include "trainer/loss_scaler.h"
#include "trainer/precision.h"
#include "trainer/run_lock.h"
#include "trainer/sample_draws.h"
#include "trainer/stop_signal.h"
#include "trainer/training_loop.h"
#include "trainer/training_loop_parts.h"

namespace difftrain {
namespace fs = std::filesystem;

namespace {

// No single activation of a step may exceed this (the bound of docs/CONFIG.md, "Memory").
constexpr double kMaxTensorBytes = 32.0 * (int64_t{1} << 30);

// Resuming an autoencoder run: its network keys are autoencoder.*, not model.*.
ResumeKeys autoencoder_resume_keys() {
  return {is_autoencoder_geometry_key, "an autoencoder run with another network, loss or data"};
}

// Rank 0, before any weights are loaded: the newest complete checkpoint must be an
// autoencoder's with the same network, so a mismatch is named rather than failing inside
// the weight loader. A file that cannot be read is left to the resume's verification.
void check_run_dir_before_resume(const Config& config) {
  const auto newest = latest_checkpoint(config.run.dir);
  if (!newest) return;
  bool autoencoder = true;
  try {
    autoencoder = is_autoencoder_checkpoint(*newest);
  } catch (const std::exception&) {
    return;
  }
  if (!autoencoder)
    throw ConfigError("run.dir " + config.run.dir + " holds checkpoint " + *newest +
                      " of a diffusion model (`difftrain train`), not of an autoencoder; use another run.dir for "
                      "`difftrain autoencoder train`");
  try {
    (void)read_checkpoint_config(*newest);
  } catch (const CheckpointError&) {
    return;
  }
  refuse_geometry_changes(config, *newest, autoencoder_resume_keys());
}

}  // namespace

model::AutoencoderOptions autoencoder_options_from(const Config& config) {
  const auto& a = config.autoencoder;
  model::AutoencoderOptions o;
  o.image_channels = config.data.channels;
  o.base_channels = a.base_channels;
  o.channel_mults = a.channel_mults;
  o.num_res_blocks = a.num_res_blocks;
  o.latent_channels = a.latent_channels;
  o.norm_groups = a.norm_groups;
  return o;
}

void check_autoencoder_config(const Config& c) {
  if (!c.train.ema_profiles.empty())
    throw ConfigError("config key 'train.ema_profiles' has " + std::to_string(c.train.ema_profiles.size()) +
                      " width(s): expected [] for `difftrain autoencoder train` (power-function EMA profiles are "
                      "kept for the diffusion UNet only)");
  if (c.data.latents)
    throw ConfigError("config key 'data.latents' = true: expected false for `difftrain autoencoder train`, which "
                      "trains on the shards' images");
  const int64_t f = model::downsample_factor(autoencoder_options_from(c));
  if (c.data.image_size % f != 0)
    throw ConfigError("config key 'data.image_size' = " + std::to_string(c.data.image_size) +
                      ": expected a multiple of the autoencoder's downsampling factor f = " + std::to_string(f) +
                      " (2^(len(autoencoder.channel_mults) - 1))");
  const double side = static_cast<double>(c.data.image_size);
  const double feature_map = 4.0 * static_cast<double>(c.train.batch_size) *
                             static_cast<double>(c.autoencoder.base_channels * c.autoencoder.channel_mults.front()) *
                             side * side;
  if (feature_map > kMaxTensorBytes) {
    char size[32];
    std::snprintf(size, sizeof size, "%.1f GB", feature_map / 1e9);
    throw ConfigError("config key 'train.batch_size' = " + std::to_string(c.train.batch_size) +
                      ": expected a batch whose activations fit in memory: one full-resolution feature map of the "
                      "autoencoder (images x autoencoder.base_channels x channel_mults[0] x data.image_size^2 x 4 "
                      "bytes) would be " + size + ", above the 34.4 GB (32 GiB) limit; lower train.batch_size (and "
                      "raise train.grad_accum_steps to keep the step's batch)");
  }
}

bool is_autoencoder_geometry_key(const std::string& key) {
  if (key.rfind("autoencoder.", 0) == 0) return true;
  if (key.rfind("model.", 0) == 0 || key.rfind("diffusion.", 0) == 0) return false;
  return is_geometry_key(key);
}

bool is_autoencoder_checkpoint(const std::string& dir) {
  const fs::path path = fs::path(dir) / "ema.pt";
  std::vector<std::string> keys;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    keys = archive.keys();
  } catch (const c10::Error& e) {
    throw CheckpointError("checkpoint file '" + path.string() + "' cannot be read: " + e.what_without_backtrace());
  }
  const std::set<std::string> names(keys.begin(), keys.end());
  return names.count("encoder") && names.count("decoder");
}

void train_autoencoder(const Config& config, MpiSession& session) {
  check_autoencoder_config(config);
  torch::set_num_threads(static_cast<int>(config.train.threads));
  const torch::Device device(config.train.device == "cuda" ? torch::kCUDA : torch::kCPU,
                             config.train.device == "cuda" ? session.local_rank() : -1);
  auto comm = make_communicator(session, device, {config.distributed.timeout_seconds});
  const bool lead = comm->rank() == 0;
  const std::string config_yaml = config_to_yaml(config);
  // Before anything in run.dir is touched: a second job on it stops here.
  std::optional<RunDirectoryLock> run_lock;
  if (lead) run_lock.emplace(config.run.dir);
  if (lead) {
    spdlog::info("resolved configuration:\n{}", config_yaml);
    spdlog::info("world: {} rank(s), backend {}, device {}", comm->world_size(), comm->backend(), device.str());
    remove_incomplete_checkpoints(config.run.dir);
    check_run_dir_before_resume(config);
  }
  // From here on a failure leaves by ~TrainingMetrics, which sets state failed and pushes it.
  auto metrics = open_training_metrics(config, comm->rank(), session.local_rank());

  prepare_data(config, *comm);
  const auto options = autoencoder_options_from(config);
  const int64_t H = config.data.image_size, C = config.data.channels, B = config.train.batch_size;
  const int64_t f = model::downsample_factor(options), c = options.latent_channels;

  torch::manual_seed(config.run.seed);
  model::AutoencoderKL net(options), ema_net(options);
  net->to(device);
  ema_net->to(device);
  copy_weights(*net, *ema_net);
  ema_net->eval();
  const auto params = net->parameters();
  FusedAdamW optimizer(params, torch::optim::AdamWOptions(config.train.lr)
                                            .betas({config.train.adam_beta1, config.train.adam_beta2})
                                            .weight_decay(config.train.weight_decay));
  const Precision precision = parse_precision(config.train.precision);
  DynamicLossScaler scaler(precision == Precision::kFp16);
  Ema ema(*net, *ema_net, config.train.ema_decay);
  const auto recon_kind = model::parse_reconstruction_loss(config.autoencoder.recon_loss);
  const double kl_weight = config.autoencoder.kl_weight;

  TrainingState state = resume_or_start(*comm, config, {*net, *ema_net, optimizer}, scaler, [&](const std::string& dir, int64_t step) {
    check_resumed_config(config, dir, step, autoencoder_resume_keys());
  });
  GradientReducer reducer(params, *comm, static_cast<int64_t>(config.distributed.bucket_mb * 1e6),
                          static_cast<int64_t>(config.distributed.first_bucket_mb * 1e6));
  if (lead) {
    int64_t parameter_count = 0;
    for (const auto& p : params) parameter_count += p.numel();
    spdlog::info("autoencoder: {}x{}x{} images -> {}x{}x{} latents (f = {}), {} parameters ({:.2f} MB); loss {} + "
                 "{} x KL; gradients in {} bucket(s), {} micro-batch(es) per step",
                 H, H, C, H / f, H / f, c, f, parameter_count, static_cast<double>(parameter_count) * 4e-6,
                 config.autoencoder.recon_loss, kl_weight, reducer.bucket_count(), config.train.grad_accum_steps);
  }

  const int64_t global_batch = B * comm->world_size();
  const int64_t accum = config.train.grad_accum_steps;
  data::Loader loader(loader_options_of(config, *comm), {state.epoch, state.samples_in_epoch / global_batch});
  if (lead)
    spdlog::info("data: {} images, {} batches of {} per rank per epoch{}", loader.dataset_size(),
                 loader.batches_per_epoch(), B, config.data.random_flip ? ", random horizontal flips" : "");
  if (metrics) metrics->start(state.step, state.images_seen);

  install_stop_signal_handlers();
  LoopHooks loop;
  loop.logged = {{"reconstruction", "rec %.5f"}, {"kl", "kl %.2f"}, {"psnr_db", "psnr %.2f dB"}};
  loop.done_message = "autoencoder training done";
  loop.loss = [&](const data::Batch& batch, std::vector<std::pair<double, double>>& extras) {
    auto x = images_to_tensor(batch.images, batch.size, H, H, C).to(device);
    // The reparameterisation noise and the flip of each sample come from its draw key; the
    // draws' timestep and condition dropout are not used here.
    const auto draws = draw_samples(static_cast<uint64_t>(config.run.seed), batch.position.epoch,
                                    batch.position.batch * global_batch + comm->rank(), comm->world_size(), B,
                                    /*timesteps=*/1, {c, H / f, H / f}, /*drop_probability=*/0.0);
    if (config.data.random_flip) x = torch::where(draws.flip.view({B, 1, 1, 1}).to(device), x.flip({3}), x);
    torch::Tensor reconstruction;
    model::Posterior posterior;
    {
      AutocastScope autocast(precision, device);
      posterior = net->encode(x);
      reconstruction = net->decode(posterior.sample(draws.noise.to(device)));
    }
    const auto parts = model::autoencoder_loss(x, reconstruction, posterior, kl_weight, recon_kind);
    // Means per step of reconstruction and KL (each micro-batch counts 1/accum), PSNR per image.
    const double share = 1.0 / static_cast<double>(accum);
    extras[0].first += parts.reconstruction.item<double>() * share, extras[0].second += share;
    extras[1].first += parts.kl.item<double>() * share, extras[1].second += share;
    {
      torch::NoGradGuard no_grad;
      const auto psnr = model::psnr_db(x, reconstruction.detach());
      extras[2].first += psnr.sum().item<double>(), extras[2].second += static_cast<double>(psnr.size(0));
    }
    // The step's loss is the mean over its micro-batches, as one batch of accum * B would give.
    return parts.total / static_cast<double>(accum);
  };
  run_training_loop(config, *comm, config_yaml, {*net, *ema_net, optimizer, reducer, scaler, ema}, loader, state,
                    metrics.get(), loop);
}

}  // namespace difftrain
