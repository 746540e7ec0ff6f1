#include "trainer/training_loop.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "distributed/communicator.h"
#include "distributed/gradient_reducer.h"
#include "distributed/weights_agreement.h"
#include "monitoring/metrics.h"
#include "monitoring/progress.h"
#include "trainer/ema.h"
#include "trainer/ema_snapshots.h"
#include "trainer/power_ema.h"
#include "trainer/loss_scaler.h"
#include "trainer/lr_schedule.h"
#include "trainer/nonfinite_guard.h"
#include "trainer/step_profiler.h"
#include "trainer/throughput_window.h"
#include "trainer/training_loop_parts.h"

namespace difftrain {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void run_training_loop(const Config& config, Communicator& comm, const std::string& config_yaml, LoopModel model,
                       data::Loader& loader, TrainingState& state, monitoring::TrainingMetrics* metrics,
                       const LoopHooks& hooks) {
  const bool lead = comm.rank() == 0;
  const int64_t B = config.train.batch_size, accum = config.train.grad_accum_steps;
  // Samples all ranks consume per loader batch; an optimizer step takes accum of them.
  const int64_t global_batch = B * comm.world_size();
  const auto params = model.net.parameters();
  const fs::path stats_path = fs::path(config.run.dir) / "metrics.jsonl";
  // Sums over the logging window: loss and its step count, communication wait, the trainer's extras.
  double loss_sum = 0, comm_wait_sum = 0;
  int64_t loss_count = 0;
  std::vector<std::pair<double, double>> extra_sums(hooks.logged.size());
  const auto reset_sums = [&] {
    loss_sum = 0, comm_wait_sum = 0, loss_count = 0;
    for (auto& e : extra_sums) e = {0.0, 0.0};
  };
  const auto run_start = Clock::now();
  const auto now_seconds = [&] { return std::chrono::duration<double>(Clock::now() - run_start).count(); };
  ThroughputWindow window;
  window.start(state.step, now_seconds());
  NonfiniteGuard guard(config.train.nonfinite_patience, config.train.on_divergence == "rollback",
                       config.train.max_rollbacks);
  const auto injected = injected_steps("DIFFTRAIN_TEST_NONFINITE_STEPS", comm.rank());
  const auto injected_weights = injected_steps("DIFFTRAIN_TEST_NONFINITE_WEIGHTS", comm.rank());
  if (lead && !(injected.empty() && injected_weights.empty()))
    spdlog::warn("fault injection: non-finite loss at {} step(s), non-finite weights after {} step(s) "
                 "(DIFFTRAIN_TEST_NONFINITE_*)", injected.size(), injected_weights.size());
  const CheckpointContents contents{model.net, model.ema_net, model.optimizer, model.ema_profiles};
  const int64_t snapshot_every =
      config.train.ema_snapshot_every > 0 ? config.train.ema_snapshot_every : config.checkpoint.every;
  // Divergence: restore the newest verified checkpoint (collective) or end with an error.
  const auto roll_back_or_stop = [&](StepVerdict verdict, int64_t at_step, const std::string& what) {
    if (verdict == StepVerdict::kStop)
      throw std::runtime_error("training diverged: " + what + "; train.on_divergence=" + config.train.on_divergence +
                               ", " + std::to_string(guard.rollbacks()) + " rollback(s) of at most " +
                               std::to_string(config.train.max_rollbacks) + " done. The newest checkpoint under " +
                               checkpoints_dir(config.run.dir) + " holds finite weights: lower train.lr or raise "
                               "train.grad_clip's strictness and run again to resume from it");
    const auto point = resume_from_newest_checkpoint(comm, config.run.dir, contents);
    if (!point)
      throw std::runtime_error("training diverged: " + what + ", and there is no checkpoint to roll back to yet "
                               "(checkpoint.every=" + std::to_string(config.checkpoint.every) + "); lower train.lr");
    state.step = point->state.step;
    model.scaler.restore(point->state.loss_scale, point->state.loss_scale_clean_steps);
    guard.rolled_back();
    if (metrics) metrics->record_rollback();
    if (lead) {
      spdlog::warn("{}: rolled back to {} (step {}), going on with the next data (rollback {} of at most {})", what,
                   point->dir, state.step, guard.rollbacks(), config.train.max_rollbacks);
      append_jsonl(stats_path, {{"event", "rollback"}, {"step", at_step}, {"to_step", state.step},
                                {"checkpoint", point->dir}, {"images_seen", state.images_seen}});
    }
    reset_sums();
    window.start(state.step, now_seconds());
  };
  model.net.train();

  int64_t iteration = 0;  // optimizer steps this process ran, rolled back or not
  StepProfiler profiler(comm.rank());  // DIFFTRAIN_PROFILE=trace.json
  while (state.step < config.train.max_steps) {
    const auto step_start = Clock::now();
    ++iteration;
    profiler.before_step(iteration);
    model.reducer.zero_grad();
    double loss_value = 0;
    std::vector<std::pair<double, double>> extras(hooks.logged.size(), {0.0, 0.0});
    data::LoaderPosition last_position;
    for (int64_t micro = 0; micro < accum; ++micro) {
      const data::Batch batch = loader.next();
      last_position = batch.position;
      auto loss = hooks.loss(batch, extras);
      if (injected.count(iteration)) loss = loss * std::numeric_limits<double>::quiet_NaN();
      model.reducer.begin_backward(/*sync=*/micro + 1 == accum);
      (loss * model.scaler.scale()).backward();
      loss_value += loss.item<double>();
    }
    model.reducer.finish();
    // All gradients, one flat tensor per bucket (the same values as model.reducer.gradients()).
    const auto& grads = model.reducer.flat_gradients();
    // Averaged gradients are identical on every rank, so every rank makes the same skip decision.
    const bool finite = model.scaler.unscale_and_check(grads);
    // An fp16 overflow is the loss scaler's to handle until its scale reaches the floor.
    const bool nonfinite = !finite && (!model.scaler.enabled() || model.scaler.scale() <= 1.0);
    model.scaler.update(finite);
    const StepVerdict verdict = guard.observe(!nonfinite);
    if (verdict == StepVerdict::kRollBack || verdict == StepVerdict::kStop) {
      if (metrics) metrics->record_nonfinite_step();
      roll_back_or_stop(verdict, state.step + 1, std::to_string(guard.streak()) + " consecutive steps with non-finite gradients, "
                                 "the last at step " + std::to_string(state.step + 1) + " (loss " +
                                 std::to_string(loss_value) + " on rank " + std::to_string(comm.rank()) + ")");
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
      set_learning_rate(model.optimizer, lr);
      model.optimizer.step();
      if (injected_weights.count(iteration)) {
        torch::NoGradGuard no_grad;
        params.front().view(-1)[0].fill_(std::numeric_limits<double>::infinity());
      }
    }
    state.step += 1;
    if (finite) model.ema.update(state.step);
    if (finite && model.power_ema) model.power_ema->update(state.step);
    profiler.after_step(iteration);
    advance_data_position(state, last_position, global_batch, accum, loader.batches_per_epoch());
    state.loss_scale = model.scaler.scale();
    state.loss_scale_clean_steps = model.scaler.clean_steps();

    if (std::isfinite(loss_value)) {  // non-finite steps are counted apart
      loss_sum += loss_value, loss_count += 1;
      for (size_t i = 0; i < extras.size(); ++i)
        extra_sums[i].first += extras[i].first, extra_sums[i].second += extras[i].second;
    }
    comm_wait_sum += model.reducer.last_step().wait_seconds;
    const double step_seconds = std::chrono::duration<double>(Clock::now() - step_start).count();
    if (metrics) {
      monitoring::StepStats stats;
      stats.loss = loss_value;
      stats.learning_rate = lr;
      stats.step_seconds = step_seconds;
      stats.images_per_second = static_cast<double>(B * accum) / step_seconds;
      stats.grad_norm = grad_norm;
      stats.loss_scale = model.scaler.scale();
      stats.images = B * accum;
      stats.skipped = !finite;
      stats.nonfinite = nonfinite;
      stats.comm_wait_seconds = model.reducer.last_step().wait_seconds;
      stats.step = state.step;
      stats.images_seen = state.images_seen;
      metrics->record_step(stats);
    }

    if (state.step % config.train.log_every == 0 || state.step == config.train.max_steps) {
      std::vector<double> sums = {loss_sum, static_cast<double>(loss_count), comm_wait_sum};
      for (const auto& [sum, count] : extra_sums) sums.push_back(sum), sums.push_back(count);
      const auto totals = comm.allreduce_sum(sums, "loss statistics");
      const double mean_loss = totals[0] / totals[1];
      const double elapsed = window.training_seconds(now_seconds());
      const double per_step = elapsed / static_cast<double>(window.steps(state.step));
      const double images_per_second = static_cast<double>(global_batch * accum) / per_step;
      // Mean over ranks of the time the training thread waited for gradient all-reduces.
      const double comm_wait_fraction = totals[2] / comm.world_size() / elapsed;
      if (lead) {
        std::string line = monitoring::format_progress(state.step, config.train.max_steps, mean_loss,
                                                       images_per_second, per_step);
        nlohmann::json record = {{"step", state.step},
                                 {"images_seen", state.images_seen},
                                 {"loss", mean_loss},
                                 {"learning_rate", lr},
                                 {"grad_norm", grad_norm},
                                 {"images_per_second", images_per_second},
                                 {"comm_wait_fraction", comm_wait_fraction},
                                 {"loss_scale", model.scaler.scale()},
                                 {"nonfinite_steps", guard.total()},
                                 {"rollbacks", guard.rollbacks()}};
        for (size_t i = 0; i < hooks.logged.size(); ++i) {
          const double mean = totals[3 + 2 * i] / totals[4 + 2 * i];
          char text[96];
          std::snprintf(text, sizeof text, hooks.logged[i].format.c_str(), mean);
          line += std::string("  ") + text;
          record[hooks.logged[i].key] = mean;
        }
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
        append_jsonl(stats_path, record);
      }
      reset_sums();
      window.start(state.step, now_seconds());
    }

    if (hooks.after_step) {
      window.exclude(hooks.after_step(state.step));  // evaluation is not training time
      model.net.train();
    }

    const bool stop = stop_requested_on_any_rank(comm);
    if (stop || state.step % config.checkpoint.every == 0 || state.step == config.train.max_steps) {
      // Never a checkpoint with non-finite weights (finite gradients with an extreme learning rate
      // can still overflow them): that is divergence too. The weights agree on every rank.
      if (!all_finite(model.net.parameters()) || !all_finite(model.ema_net.parameters())) {
        const bool can_roll_back = config.train.on_divergence == "rollback" &&
                                   guard.rollbacks() < config.train.max_rollbacks;
        roll_back_or_stop(can_roll_back ? StepVerdict::kRollBack : StepVerdict::kStop, state.step,
                          "the weights are not finite at step " + std::to_string(state.step) +
                              " (not written as a checkpoint)");
        continue;
      }
      require_identical_weights(comm, model.net, "checkpoint at step " + std::to_string(state.step));
      const auto path = save_checkpoint(comm, config.run.dir, state, contents, config_yaml, config.checkpoint.keep);
      if (lead) spdlog::info("checkpoint: {}", path);
    }
    if (!model.ema_profiles.empty() && state.step % snapshot_every == 0 && lead) {
      bool finite_profiles = true;
      for (auto* profile : model.ema_profiles) finite_profiles = finite_profiles && all_finite(profile->parameters());
      if (finite_profiles) write_ema_snapshot(config.run.dir, state.step, model.ema_profiles, config.train.ema_profiles);
      else spdlog::warn("step {}: an EMA profile is not finite, no snapshot written", state.step);
    }
    if (stop) {
      if (lead) spdlog::info("stopping at step {} on a stop signal (SIGTERM/SIGUSR1); run the same command to resume",
                             state.step);
      if (metrics) metrics->finish(monitoring::JobState::kStopped);
      return;
    }
  }
  if (lead) spdlog::info("{}: step {} in {}", hooks.done_message, state.step, config.run.dir);
  if (metrics) metrics->finish(monitoring::JobState::kFinished);
}

}  // namespace difftrain
