#include "trainer/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "data/captions.h"
#include "data/loader.h"
#include "data/shard_reader.h"
#include "data/synthetic_shapes.h"
#include "diffusion/objective.h"
#include "diffusion/schedule.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "monitoring/metrics.h"
#include "monitoring/progress.h"
#include "trainer/batch_tensors.h"
#include "trainer/checkpoint.h"
#include "trainer/config_diff.h"
#include "distributed/communicator.h"
#include "trainer/ema.h"
#include "distributed/gradient_reducer.h"
#include "trainer/loss_scaler.h"
#include "trainer/lr_schedule.h"
#include "trainer/model_options.h"
#include "distributed/mpi_session.h"
#include "trainer/precision.h"
#include "trainer/nonfinite_guard.h"
#include "trainer/run_lock.h"
#include "trainer/throughput_window.h"
#include "trainer/sample_draws.h"
#include "trainer/stop_signal.h"
#include "distributed/weights_agreement.h"

namespace difftrain {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

data::ImageGeometry geometry_of(const Config& c) { return {c.data.image_size, c.data.image_size, c.data.channels}; }

// A user's data directory is only ever read: without data.synthetic a missing
// or empty data.dir is an error naming it, never a reason to write a dataset.
void check_user_data_dir(const Config& c) {
  const std::string hint =
      "; expected a directory of *.h5 shards (make them with `difftrain make-shards`, docs/SHARD_FORMAT.md), "
      "or set data.synthetic=true to write the built-in shapes dataset there";
  std::error_code ec;
  if (!fs::exists(c.data.dir, ec)) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": does not exist" + hint);
  if (!fs::is_directory(c.data.dir, ec)) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": is not a directory" + hint);
  bool has_shard = false;
  for (const auto& entry : fs::directory_iterator(c.data.dir, ec))
    has_shard = has_shard || (entry.is_regular_file() && entry.path().extension() == data::kShardExtension);
  if (!has_shard) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": holds no *.h5 shard" + hint);
}

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

// Rank 0 writes the built-in dataset when asked and missing; the others wait.
void prepare_data(const Config& c, Communicator& comm) {
  if (comm.rank() == 0 && !c.data.synthetic) check_user_data_dir(c);
  if (comm.rank() == 0 && c.data.synthetic) {
    data::SyntheticSpec spec;
    spec.count = c.data.synthetic_count;
    spec.image_size = c.data.image_size;
    spec.seed = static_cast<uint64_t>(c.run.seed) + 1234;
    const auto paths = data::write_synthetic_shards(c.data.dir, spec);
    spdlog::info("data: {} shards of built-in captioned shapes in {}", paths.size(), c.data.dir);
  }
  comm.barrier("data: rank 0 writes the built-in dataset");
}

// model.conditioning=precomputed: the shards' embeddings must have the configured shape and
// carry the null condition, which is returned (one sample, float16 bits).
TextEmbeddingBits check_text_embeddings(const Config& c) {
  const auto shards = data::open_shard_directory(c.data.dir, geometry_of(c));
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

double global_grad_norm(const std::vector<torch::Tensor>& grads) {
  double sum = 0;
  for (const auto& g : grads) sum += g.pow(2).sum().item<double>();
  return std::sqrt(sum);
}

void clip_gradients(const std::vector<torch::Tensor>& grads, double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return;
  torch::NoGradGuard no_grad;
  const double factor = max_norm / (norm + 1e-6);
  for (const auto& g : grads) g.mul_(factor);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
}


bool all_finite(const std::vector<torch::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (!torch::isfinite(t).all().item<bool>()) return false;
  return true;
}

// Test hooks (tests/reliability_tests.py): DIFFTRAIN_TEST_NONFINITE_STEPS="5,6,7" or "5@1,6@1"
// makes the loss NaN in the 5th, 6th, 7th optimizer step this process runs (on every rank,
// or only on the rank after '@'); DIFFTRAIN_TEST_NONFINITE_WEIGHTS="10" makes one weight
// infinite after the 10th step's update. Counted per process, so a rolled-back run does not
// meet the same injected step again.
std::set<int64_t> injected_steps(const char* variable, int rank) {
  std::set<int64_t> steps;
  const char* spec = std::getenv(variable);
  if (spec == nullptr) return steps;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    const auto at = item.find('@');
    try {
      if (at == std::string::npos || std::stoi(item.substr(at + 1)) == rank) steps.insert(std::stoll(item.substr(0, at)));
    } catch (const std::exception&) {
      throw std::runtime_error(std::string(variable) + "='" + std::string(spec) +
                               "': expected comma-separated steps, each optionally followed by @rank");
    }
  }
  return steps;
}

void append_jsonl(const fs::path& path, const nlohmann::json& line) {
  std::ofstream out(path, std::ios::app);
  out << line.dump() << "\n";
}

}  // namespace

void train(const Config& config, MpiSession& session, const TrainingHooks& hooks) {
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
  std::unique_ptr<monitoring::TrainingMetrics> metrics;
  if (config.monitoring.enabled || !config.monitoring.pushgateway.empty()) {
    monitoring::MetricsOptions metrics_options;
    if (config.monitoring.enabled)
      metrics_options.bind_address =
          config.monitoring.host + ":" + std::to_string(config.monitoring.port + session.local_rank());
    metrics_options.rank = comm->rank();
    metrics_options.run = config.run.name;
    metrics_options.pushgateway = config.monitoring.pushgateway;
    metrics = std::make_unique<monitoring::TrainingMetrics>(metrics_options);
    if (lead && config.monitoring.enabled)
      spdlog::info("metrics: http://{}/metrics (+ local rank for the other ranks)", metrics->bound_address());
  }

  prepare_data(config, *comm);
  data::LoaderOptions loader_options;
  loader_options.shard_dir = config.data.dir;
  loader_options.geometry = geometry_of(config);
  loader_options.batch_size = config.train.batch_size;
  loader_options.rank = comm->rank();
  loader_options.world_size = comm->world_size();
  loader_options.seed = static_cast<uint64_t>(config.run.seed);
  loader_options.prefetch_batches = static_cast<int>(config.data.prefetch_batches);
  const bool precomputed = config.model.conditioning == "precomputed";
  loader_options.load_text_embeddings = precomputed;
  TextEmbeddingBits null_condition;
  if (precomputed) null_condition = check_text_embeddings(config);

  torch::manual_seed(config.run.seed);
  const auto unet_options = unet_options_from(config.model, config.data.image_size, config.data.channels);
  model::UNet net(unet_options), ema_net(unet_options);
  net->to(device);
  ema_net->to(device);
  copy_weights(*net, *ema_net);
  ema_net->eval();
  const auto params = net->parameters();
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(config.train.lr)
                                            .betas({config.train.adam_beta1, config.train.adam_beta2})
                                            .weight_decay(config.train.weight_decay));
  const Precision precision = parse_precision(config.train.precision);
  DynamicLossScaler scaler(precision == Precision::kFp16);
  Ema ema(*net, *ema_net, config.train.ema_decay);

  TrainingState state;
  state.world_size = comm->world_size();
  // Rank 0 picks the newest checkpoint that verifies and sends its bytes: ranks need no shared disk.
  if (auto resumed = resume_from_newest_checkpoint(*comm, config.run.dir, {*net, *ema_net, optimizer})) {
    state = resumed->state;
    scaler.restore(state.loss_scale, state.loss_scale_clean_steps);
    if (lead) spdlog::info("resumed from {} at step {}", resumed->dir, state.step);
    // A changed model/data key ends the job here (rank 0's error aborts every rank); other changes are recorded.
    if (lead) check_resumed_config(config, resumed->dir, state.step);
    if (state.world_size != comm->world_size() && lead)
      spdlog::info("checkpoint was written by {} ranks, resuming with {}: data position kept by sample count",
                   state.world_size, comm->world_size());
    state.world_size = comm->world_size();
  }
  // Identical starting weights on every rank, whatever each rank loaded or initialised.
  comm->broadcast(net->parameters(), 0, "initial weights");
  comm->broadcast(ema_net->parameters(), 0, "initial EMA weights");
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
      spdlog::info("conditioning: precomputed text embeddings L={} D={} D'={} from the shards",
                   loader.text_shape().tokens, loader.text_shape().width, loader.text_shape().pooled_width);
    else
      warn_about_long_captions(config);
  }

  if (metrics) metrics->start(state.step, state.images_seen);  // pushes state running

  const auto schedule = diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps);
  const auto prediction = diffusion::parse_prediction(config.diffusion.prediction);
  const int64_t H = config.data.image_size, C = config.data.channels, B = config.train.batch_size;
  install_stop_signal_handlers();
  const fs::path stats_path = fs::path(config.run.dir) / "metrics.jsonl";
  double loss_sum = 0, comm_wait_sum = 0;
  int64_t loss_count = 0;
  const auto run_start = Clock::now();
  const auto now_seconds = [&] { return std::chrono::duration<double>(Clock::now() - run_start).count(); };
  ThroughputWindow window;
  window.start(state.step, now_seconds());
  NonfiniteGuard guard(config.train.nonfinite_patience, config.train.on_divergence == "rollback",
                       config.train.max_rollbacks);
  const auto injected = injected_steps("DIFFTRAIN_TEST_NONFINITE_STEPS", comm->rank());
  const auto injected_weights = injected_steps("DIFFTRAIN_TEST_NONFINITE_WEIGHTS", comm->rank());
  if (lead && !(injected.empty() && injected_weights.empty()))
    spdlog::warn("fault injection: non-finite loss at {} step(s), non-finite weights after {} step(s) "
                 "(DIFFTRAIN_TEST_NONFINITE_*)", injected.size(), injected_weights.size());
  // Divergence: restore the newest verified checkpoint (collective) or end with an error.
  const auto roll_back_or_stop = [&](StepVerdict verdict, int64_t at_step, const std::string& what) {
    if (verdict == StepVerdict::kStop)
      throw std::runtime_error("training diverged: " + what + "; train.on_divergence=" + config.train.on_divergence +
                               ", " + std::to_string(guard.rollbacks()) + " rollback(s) of at most " +
                               std::to_string(config.train.max_rollbacks) + " done. The newest checkpoint under " +
                               checkpoints_dir(config.run.dir) + " holds finite weights: lower train.lr or raise "
                               "train.grad_clip's strictness and run again to resume from it");
    CheckpointContents contents{*net, *ema_net, optimizer};
    const auto point = resume_from_newest_checkpoint(*comm, config.run.dir, contents);
    if (!point)
      throw std::runtime_error("training diverged: " + what + ", and there is no checkpoint to roll back to yet "
                               "(checkpoint.every=" + std::to_string(config.checkpoint.every) + "); lower train.lr");
    state.step = point->state.step;
    scaler.restore(point->state.loss_scale, point->state.loss_scale_clean_steps);
    guard.rolled_back();
    if (metrics) metrics->record_rollback();
    if (lead) {
      spdlog::warn("{}: rolled back to {} (step {}), going on with the next data (rollback {} of at most {})", what,
                   point->dir, state.step, guard.rollbacks(), config.train.max_rollbacks);
      append_jsonl(stats_path, {{"event", "rollback"}, {"step", at_step}, {"to_step", state.step},
                                {"checkpoint", point->dir}, {"images_seen", state.images_seen}});
    }
    loss_sum = 0, loss_count = 0, comm_wait_sum = 0;
    window.start(state.step, now_seconds());
  };
  net->train();

  int64_t iteration = 0;  // optimizer steps this process ran, rolled back or not
  while (state.step < config.train.max_steps) {
    const auto step_start = Clock::now();
    ++iteration;
    reducer.zero_grad();
    double loss_value = 0;
    data::LoaderPosition last_position;
    for (int64_t micro = 0; micro < accum; ++micro) {
      data::Batch batch = loader.next();
      last_position = batch.position;
      auto x0 = images_to_tensor(batch.images, batch.size, H, H, C).to(device);
      const auto draws = draw_samples(static_cast<uint64_t>(config.run.seed), batch.position.epoch,
                                      batch.position.batch * global_batch + comm->rank(), comm->world_size(), B,
                                      schedule.timesteps, {C, H, H}, config.train.cond_dropout);
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
      auto x_t = diffusion::q_sample(schedule, x0, t, noise);
      auto target = diffusion::training_target(prediction, schedule, x0, noise, t);

      torch::Tensor output;
      {
        AutocastScope autocast(precision, device);
        output = precomputed ? net->forward(x_t, t, condition) : net->forward(x_t, t, tokens);
      }
      // The step's loss is the mean over its micro-batches, as one batch of accum * B would give.
      auto loss = torch::mse_loss(output.to(torch::kFloat32), target) / static_cast<double>(accum);
      if (injected.count(iteration)) loss = loss * std::numeric_limits<double>::quiet_NaN();
      reducer.begin_backward(/*sync=*/micro + 1 == accum);
      (loss * scaler.scale()).backward();
      loss_value += loss.item<double>();
    }
    reducer.finish();
    const auto& grads = reducer.gradients();
    // Averaged gradients are identical on every rank, so every rank makes the same skip decision.
    const bool finite = scaler.unscale_and_check(grads);
    // An fp16 overflow is the loss scaler's to handle until its scale reaches the floor.
    const bool nonfinite = !finite && (!scaler.enabled() || scaler.scale() <= 1.0);
    scaler.update(finite);
    const StepVerdict verdict = guard.observe(!nonfinite);
    if (verdict == StepVerdict::kRollBack || verdict == StepVerdict::kStop) {
      if (metrics) metrics->record_nonfinite_step();
      roll_back_or_stop(verdict, state.step + 1, std::to_string(guard.streak()) + " consecutive steps with non-finite gradients, "
                                 "the last at step " + std::to_string(state.step + 1) + " (loss " +
                                 std::to_string(loss_value) + " on rank " + std::to_string(comm->rank()) + ")");
      continue;
    }
    if (nonfinite && lead) {
      spdlog::warn("step {}: non-finite gradients (loss {} on rank 0), step skipped ({} of {} in a row allowed)",
                   state.step + 1, loss_value, guard.streak(), guard.patience() - 1);
      append_jsonl(stats_path, {{"event", "nonfinite"}, {"step", state.step + 1}, {"images_seen", state.images_seen},
                                {"streak", guard.streak()}});
    }
    const double lr = learning_rate_at(state.step, config.train.lr, config.train.warmup_steps,
                                       config.train.max_steps, config.train.min_lr_ratio);
    double grad_norm = 0;
    if (finite) {
      grad_norm = global_grad_norm(grads);
      clip_gradients(grads, grad_norm, config.train.grad_clip);
      set_learning_rate(optimizer, lr);
      optimizer.step();
      if (injected_weights.count(iteration)) {
        torch::NoGradGuard no_grad;
        params.front().view(-1)[0].fill_(std::numeric_limits<double>::infinity());
      }
    }
    state.step += 1;
    if (finite) ema.update(state.step);
    state.images_seen += global_batch * accum;
    state.samples_in_epoch = (last_position.batch + 1) * global_batch;
    state.epoch = last_position.epoch;
    if (last_position.batch + 1 == loader.batches_per_epoch()) state.epoch += 1, state.samples_in_epoch = 0;
    state.loss_scale = scaler.scale();
    state.loss_scale_clean_steps = scaler.clean_steps();

    if (std::isfinite(loss_value)) loss_sum += loss_value, loss_count += 1;  // non-finite steps are counted apart
    comm_wait_sum += reducer.last_step().wait_seconds;
    const double step_seconds = std::chrono::duration<double>(Clock::now() - step_start).count();
    if (metrics) {
      monitoring::StepStats stats;
      stats.loss = loss_value;
      stats.learning_rate = lr;
      stats.step_seconds = step_seconds;
      stats.images_per_second = static_cast<double>(B * accum) / step_seconds;
      stats.grad_norm = grad_norm;
      stats.loss_scale = scaler.scale();
      stats.images = B * accum;
      stats.skipped = !finite;
      stats.nonfinite = nonfinite;
      stats.comm_wait_seconds = reducer.last_step().wait_seconds;
      stats.step = state.step;
      stats.images_seen = state.images_seen;
      metrics->record_step(stats);
    }

    if (state.step % config.train.log_every == 0 || state.step == config.train.max_steps) {
      const auto totals = comm->allreduce_sum({loss_sum, static_cast<double>(loss_count), comm_wait_sum},
                                              "loss statistics");
      const double mean_loss = totals[0] / totals[1];
      const double elapsed = window.training_seconds(now_seconds());
      const double per_step = elapsed / static_cast<double>(window.steps(state.step));
      const double images_per_second = static_cast<double>(global_batch * accum) / per_step;
      // Mean over ranks of the time the training thread waited for gradient all-reduces.
      const double comm_wait_fraction = totals[2] / comm->world_size() / elapsed;
      if (lead) {
        std::printf("%s\n", monitoring::format_progress(state.step, config.train.max_steps, mean_loss,
                                                        images_per_second, per_step)
                                .c_str());
        std::fflush(stdout);
        append_jsonl(stats_path, {{"step", state.step},
                                  {"images_seen", state.images_seen},
                                  {"loss", mean_loss},
                                  {"learning_rate", lr},
                                  {"grad_norm", grad_norm},
                                  {"images_per_second", images_per_second},
                                  {"comm_wait_fraction", comm_wait_fraction},
                                  {"loss_scale", scaler.scale()},
                                  {"nonfinite_steps", guard.total()},
                                  {"rollbacks", guard.rollbacks()}});
      }
      loss_sum = 0, loss_count = 0, comm_wait_sum = 0;
      window.start(state.step, now_seconds());
    }

    if (config.eval.every > 0 && hooks.fid && state.step % config.eval.every == 0) {
      const auto eval_start = Clock::now();
      const double fid = hooks.fid(ema_net, *comm);
      if (metrics) metrics->set_fid(fid);
      if (lead) {
        spdlog::info("step {}: FID {:.3f} ({} {} steps, w={}, {} images, {:.1f} s)", state.step, fid,
                     config.eval.sampler, config.eval.steps, config.eval.guidance, config.eval.samples,
                     std::chrono::duration<double>(Clock::now() - eval_start).count());
        append_jsonl(stats_path, {{"step", state.step}, {"images_seen", state.images_seen}, {"fid", fid}});
      }
      net->train();
      window.exclude(std::chrono::duration<double>(Clock::now() - eval_start).count());  // not training time
    }

    const bool last_step = state.step == config.train.max_steps;
    if (hooks.validation && lead &&
        ((config.eval.prompts_every > 0 && state.step % config.eval.prompts_every == 0) || last_step)) {
      const auto validation_start = Clock::now();
      hooks.validation(ema_net, state.step);
      net->train();
      window.exclude(std::chrono::duration<double>(Clock::now() - validation_start).count());
    }

    // One tiny all-reduce per step: every rank stops at the same step if any rank was signalled.
    const bool stop = comm->allreduce_sum({pending_stop_signal() != 0 ? 1.0 : 0.0}, "stop flag")[0] > 0;
    if (stop || state.step % config.checkpoint.every == 0 || state.step == config.train.max_steps) {
      // Never a checkpoint with non-finite weights (finite gradients with an extreme learning rate
      // can still overflow them): that is divergence too. The weights agree on every rank.
      if (!all_finite(net->parameters()) || !all_finite(ema_net->parameters())) {
        const bool can_roll_back = config.train.on_divergence == "rollback" &&
                                   guard.rollbacks() < config.train.max_rollbacks;
        roll_back_or_stop(can_roll_back ? StepVerdict::kRollBack : StepVerdict::kStop, state.step,
                          "the weights are not finite at step " + std::to_string(state.step) +
                              " (not written as a checkpoint)");
        continue;
      }
      require_identical_weights(*comm, *net, "checkpoint at step " + std::to_string(state.step));
      CheckpointContents contents{*net, *ema_net, optimizer};
      const auto path = save_checkpoint(*comm, config.run.dir, state, contents, config_yaml, config.checkpoint.keep);
      if (lead) spdlog::info("checkpoint: {}", path);
    }
    if (stop) {
      if (lead) spdlog::info("stopping at step {} on a stop signal (SIGTERM/SIGUSR1); run the same command to resume",
                             state.step);
      if (metrics) metrics->finish(monitoring::JobState::kStopped);
      return;
    }
  }
  if (lead) spdlog::info("training done: step {} in {}", state.step, config.run.dir);
  if (metrics) metrics->finish(monitoring::JobState::kFinished);
}

}  // namespace difftrain
