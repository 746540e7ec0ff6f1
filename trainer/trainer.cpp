#include "trainer/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <filesystem>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "data/captions.h"
#include "data/loader.h"
#include "data/shard_reader.h"
#include "data/synthetic_shapes.h"
#include "diffusion/loss_weighting.h"
#include "diffusion/objective.h"
#include "diffusion/schedule.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "monitoring/metrics.h"
#include "trainer/batch_tensors.h"
#include "trainer/checkpoint.h"
#include "trainer/config_diff.h"
#include "trainer/data_identity.h"
#include "distributed/communicator.h"
#include "trainer/ema.h"
#include "trainer/power_ema.h"
#include "trainer/fused_adamw.h"
#include "distributed/gradient_reducer.h"
#include "trainer/loss_scaler.h"
#include "trainer/model_options.h"
#include "distributed/mpi_session.h"
#include "trainer/precision.h"
#include "trainer/run_lock.h"
#include "trainer/training_loop.h"
#include "trainer/training_loop_parts.h"
#include "trainer/sample_draws.h"
#include "trainer/stop_signal.h"

namespace difftrain {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// One warning, with the count, when the tokenizer will cut captions.
void warn_about_long_captions(const Config& c) {
  const auto lengths = data::caption_lengths(data::read_shard_captions(c.data.dir), c.model.max_tokens);
  if (lengths.longer == 0) return;
  spdlog::warn("data: {} of {} captions ({:.1f}%) are longer than model.max_tokens={} bytes and are cut "
               "(p50 {} / p90 {} / max {} bytes), e.g. \"{}\" becomes \"{}\"",
               lengths.longer, lengths.count, 100.0 * static_cast<double>(lengths.longer) / lengths.count,
               c.model.max_tokens, lengths.p50, lengths.p90, lengths.max, lengths.example_longer,
               lengths.example_longer.substr(0, static_cast<size_t>(c.model.max_tokens)));
}

// model.conditioning=precomputed: the shards' embeddings must have the configured shape and
// carry the null condition, which is returned (one sample, float16 bits).
TextEmbeddingBits check_text_embeddings(const Config& c) {
  const auto shards = data::open_shard_directory(c.data.dir, image_geometry_of(c));
  const auto shape = data::text_embedding_shape(shards);
  const std::string where = "model.conditioning=precomputed, but the shards in data.dir = " + c.data.dir;
  if (!shape)
    throw ConfigError(where + " carry no text embeddings (text_states/text_mask); compute them first with "
                      "`difftrain encode-text --encoder ENCODER.pt --data " + c.data.dir + "` (docs/CONDITIONING.md)");
  const auto& m = c.model;
  if (shape->tokens != m.max_tokens || shape->width != m.context_dim || shape->pooled_width != m.pooled_dim)
    throw ConfigError(where + " hold embeddings of L=" + std::to_string(shape->tokens) + " D=" +
                      std::to_string(shape->width) + " D'=" + std::to_string(shape->pooled_width) +
                      " (encoder \"" + shards.front().text_encoder + "\"), while the config says model.max_tokens=" +
                      std::to_string(m.max_tokens) + " model.context_dim=" + std::to_string(m.context_dim) +
                      " model.pooled_dim=" + std::to_string(m.pooled_dim) + "; set these keys to the shards' shape");
  if (!shape->has_null)
    throw ConfigError(where + " carry no null condition (text_null_*), which condition dropout needs; "
                      "re-run `difftrain encode-text` on them");
  TextEmbeddingBits null;
  null.states.resize(static_cast<size_t>(shape->state_values()));
  null.mask.resize(static_cast<size_t>(shape->tokens));
  null.pooled.resize(static_cast<size_t>(shape->pooled_width));
  data::ShardReader reader(shards.front());
  reader.read_text_null(null.states.data(), null.mask.data(), shape->pooled_width > 0 ? null.pooled.data() : nullptr);
  return null;
}

}  // namespace

void train(const Config& given_config, MpiSession& session, const TrainingHooks& hooks) {
  // The saved config names the encoders that made precomputed embeddings and latents.
  const Config config = resolve_data_identity(given_config);
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
  }
  // After the run lock (a job refused there must not push "failed" over the running job's state), before
  // what can fail: from here on a failure leaves by ~TrainingMetrics, which sets state failed and pushes it.
  auto metrics = open_training_metrics(config, comm->rank(), session.local_rank());
  prepare_data(config, *comm);
  data::LoaderOptions loader_options = loader_options_of(config, *comm);
  const bool precomputed = config.model.conditioning == "precomputed";
  loader_options.load_text_embeddings = precomputed;
  loader_options.load_latents = config.data.latents;
  TextEmbeddingBits null_condition;
  if (precomputed) null_condition = check_text_embeddings(config);

  torch::manual_seed(config.run.seed);
  const auto unet_options = unet_options_from(config.model, model_input_size(config), model_input_channels(config));
  model::UNet net(unet_options), ema_net(unet_options);
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
  // EDM2's power-function EMA profiles, one network each (train.ema_profiles).
  std::vector<model::UNet> profile_nets;
  std::vector<torch::nn::Module*> profiles;
  for (size_t k = 0; k < config.train.ema_profiles.size(); ++k) {
    profile_nets.emplace_back(unet_options);
    profile_nets.back()->to(device);
    copy_weights(*net, *profile_nets.back());
    profile_nets.back()->eval();
    profiles.push_back(profile_nets.back().get());
  }
  PowerEma power_ema(*net, profiles, config.train.ema_profiles);

  TrainingState state = resume_or_start(*comm, config, {*net, *ema_net, optimizer, profiles}, scaler,
                                        [&](const std::string& dir, int64_t step) { check_resumed_config(config, dir, step); });
  // After the weights are final and in place: gradients become views into its buckets.
  GradientReducer reducer(params, *comm, static_cast<int64_t>(config.distributed.bucket_mb * 1e6),
                          static_cast<int64_t>(config.distributed.first_bucket_mb * 1e6));
  if (lead) {
    int64_t parameter_count = 0;
    for (const auto& p : params) parameter_count += p.numel();
    spdlog::info("gradients: {} bucket(s) for {} parameters ({:.2f} MB), first <= {} MB, others <= {} MB, "
                 "all-reduced during backward; {} micro-batch(es) per step",
                 reducer.bucket_count(), parameter_count, static_cast<double>(parameter_count) * 4e-6,
                 config.distributed.first_bucket_mb, config.distributed.bucket_mb, config.train.grad_accum_steps);
    if (config.model.checkpoint_activations)
      spdlog::info("activation checkpointing: every UNet block recomputes its activations in backward");
  }

  // Samples all ranks consume per loader batch; an optimizer step takes grad_accum_steps of them.
  const int64_t global_batch = config.train.batch_size * comm->world_size();
  const int64_t accum = config.train.grad_accum_steps;
  data::Loader loader(loader_options, {state.epoch, state.samples_in_epoch / global_batch});
  if (lead) {
    spdlog::info("data: {} samples, {} batches of {} per rank per epoch{}", loader.dataset_size(),
                 loader.batches_per_epoch(), config.train.batch_size,
                 config.data.random_flip ? ", random horizontal flips" : "");
    if (precomputed)
      spdlog::info("conditioning: precomputed text embeddings L={} D={} D'={} from the shards ({}, null condition: {})",
                   loader.text_shape().tokens, loader.text_shape().width, loader.text_shape().pooled_width,
                   config.model.text_encoder, config.model.text_null);
    else
      warn_about_long_captions(config);
  }

  if (metrics) metrics->start(state.step, state.images_seen);  // pushes state running

  const auto schedule = diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps,
                                                config.diffusion.zero_terminal_snr, config.diffusion.flow_shift);
  const auto prediction = diffusion::parse_prediction(config.diffusion.prediction);
  const auto weighting = diffusion::parse_loss_weighting(config.diffusion.loss_weighting);
  std::function<int64_t(double)> timestep_of_normal;  // empty: uniform timesteps
  if (config.diffusion.timestep_sampling == "lognormal") {
    timestep_of_normal = [&schedule, &config](double z) {
      return diffusion::lognormal_timestep(schedule, z, config.diffusion.lognormal_mean, config.diffusion.lognormal_std);
    };
  } else if (config.diffusion.timestep_sampling == "logit_normal") {
    timestep_of_normal = [&schedule, &config](double z) {
      return diffusion::logit_normal_timestep(schedule.timesteps, z, config.diffusion.logit_normal_mean,
                                              config.diffusion.logit_normal_std);
    };
  }
  // The UNet's input: images, or latents (c, h, h) with data.latents.
  const int64_t H = model_input_size(config), C = model_input_channels(config), B = config.train.batch_size;
  data::LatentInfo latent_scaling;
  if (config.data.latents) {
    latent_scaling = *loader.latents();
    latent_scaling.scale = config.data.latent_scale;
    latent_scaling.shift = config.data.latent_shift;
    if (lead)
      spdlog::info("data: latents {} from {}, diffused as (latents - {}) * {}", data::to_string(latent_scaling.shape),
                   config.data.latent_encoder, latent_scaling.shift, latent_scaling.scale);
  }
  install_stop_signal_handlers();
  LoopHooks loop;
  loop.loss = [&](const data::Batch& batch, std::vector<std::pair<double, double>>&) {
    auto x0 = (config.data.latents ? latents_to_tensor(batch.latents, batch.size, latent_scaling)
                                   : images_to_tensor(batch.images, batch.size, H, H, C))
                  .to(device);
    const auto draws = draw_samples(static_cast<uint64_t>(config.run.seed), batch.position.epoch,
                                    batch.position.batch * global_batch + comm->rank(), comm->world_size(), B,
                                    schedule.timesteps, {C, H, H}, config.train.cond_dropout, timestep_of_normal,
                                    config.diffusion.offset_noise);
    // Each sample's flip is part of its draws, so resume and rank-equivalence stay exact.
    if (config.data.random_flip) x0 = torch::where(draws.flip.view({B, 1, 1, 1}).to(device), x0.flip({3}), x0);
    // Condition dropout: the caption becomes the null condition (all padding for the
    // built-in encoder; the stored embedding of the empty caption for precomputed ones).
    torch::Tensor tokens;
    model::Conditioning condition;
    if (precomputed) {
      condition = precomputed_conditioning({batch.text_states, batch.text_mask, batch.text_pooled}, batch.size,
                                           batch.text_shape, null_condition, draws.drop);
      condition.context = condition.context.to(device);
      condition.mask = condition.mask.to(device);
      if (condition.pooled.defined()) condition.pooled = condition.pooled.to(device);
    } else {
      tokens = tokenize_batch(batch.captions, config.model.max_tokens)
                   .masked_fill(draws.drop.unsqueeze(1), model::kPadToken)
                   .to(device);
    }
    auto t = draws.timesteps.to(device);
    auto noise = draws.noise.to(device);
    // For a flow model the input is x_flow = (1 - s) x0 + s eps, the VP point scaled (diffusion/objective.h).
    auto x_t = diffusion::network_input(prediction, schedule, diffusion::q_sample(schedule, x0, t, noise), t);
    auto target = diffusion::training_target(prediction, schedule, x0, noise, t);

    torch::Tensor output;
    {
      AutocastScope autocast(precision, device);
      output = precomputed ? net->forward(x_t, t, condition) : net->forward(x_t, t, tokens);
    }
    // The step's loss is the mean over its micro-batches, as one batch of accum * B would give.
    if (weighting == diffusion::LossWeighting::kUniform)
      return torch::mse_loss(output.to(torch::kFloat32), target) / static_cast<double>(accum);
    // Each sample's squared error weighed by its timestep's weight (Min-SNR-γ), then the batch mean.
    const auto weights = diffusion::loss_weights(weighting, prediction, schedule, draws.timesteps,
                                                 config.diffusion.min_snr_gamma).to(device);
    const auto per_sample = (output.to(torch::kFloat32) - target).pow(2).mean({1, 2, 3});
    return (weights * per_sample).mean() / static_cast<double>(accum);
  };
  // The FID point (collective) and the validation grids (rank 0) of the EMA weights.
  const fs::path stats_path = fs::path(config.run.dir) / "metrics.jsonl";
  loop.after_step = [&](int64_t step) {
    const auto start = Clock::now();
    if (config.eval.every > 0 && hooks.fid && step % config.eval.every == 0) {
      const double fid = hooks.fid(ema_net, *comm);
      if (metrics) metrics->set_fid(fid);
      if (lead) {
        spdlog::info("step {}: FID {:.3f} ({} {} steps, w={}, {} images, {:.1f} s)", step, fid, config.eval.sampler,
                     config.eval.steps, config.eval.guidance, config.eval.samples,
                     std::chrono::duration<double>(Clock::now() - start).count());
        append_jsonl(stats_path, {{"step", step}, {"images_seen", state.images_seen}, {"fid", fid}});
      }
    }
    if (hooks.validation && lead &&
        ((config.eval.prompts_every > 0 && step % config.eval.prompts_every == 0) || step == config.train.max_steps))
      hooks.validation(ema_net, step);
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  run_training_loop(config, *comm, config_yaml, {*net, *ema_net, optimizer, reducer, scaler, ema, &power_ema, profiles}, loader, state,
                    metrics.get(), loop);
}

}  // namespace difftrain
