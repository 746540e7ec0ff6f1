#include "monitoring/metrics.h"

#include <chrono>
#include <cmath>

#include "monitoring/metrics_http_server.h"
#include "monitoring/registry_util.h"

namespace difftrain::monitoring {
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

TrainingMetrics::TrainingMetrics(const MetricsOptions& options)
    : registry_(std::make_shared<prometheus::Registry>()) {
  const PushIdentity identity{options.run, options.host.empty() ? local_hostname() : options.host, options.rank};
  const prometheus::Labels labels = identity_labels(identity);
  auto& r = *registry_;
  const auto lazy = [&](const char* name, const char* help) { return std::make_unique<LazyGauge>(r, name, help, labels); };
  loss_ = lazy("difftrain_loss", "Training loss of the last step (NaN or Inf for a non-finite one).");
  learning_rate_ = lazy("difftrain_learning_rate", "Learning rate of the last step.");
  step_seconds_ = lazy("difftrain_step_seconds", "Wall time of the last step.");
  comm_wait_seconds_ = lazy("difftrain_comm_wait_seconds",
                            "Part of the last step spent waiting for gradient all-reduces (not hidden behind "
                            "backward).");
  images_per_second_ = lazy("difftrain_images_per_second", "Images per second this rank processed in the last step.");
  grad_norm_ = lazy("difftrain_grad_norm", "Global gradient L2 norm before clipping, of the last applied step.");
  loss_scale_ = lazy("difftrain_loss_scale", "fp16 dynamic loss scale (1 without fp16).");
  last_step_timestamp_ =
      lazy("difftrain_last_step_timestamp_seconds", "Unix time the last step completed (stall: time() minus it).");
  fid_ = lazy("difftrain_fid", "FID of the latest training-time evaluation point (eval.every).");
  job_state_ = std::make_unique<JobStateGauge>(r, labels);
  step_ = add_gauge(r, "difftrain_step", "The run's optimizer step (continues across resumes).", labels);
  images_seen_ = add_gauge(r, "difftrain_images_seen",
                           "The run's training images, all ranks (continues across resumes).", labels);
  add_gauge(r, "difftrain_process_start_time_seconds", "Unix time this process started (changes on a restart).",
            labels)
      ->Set(process_start_time_seconds());
  steps_total_ = add_counter(r, "difftrain_steps_total",
                             "Steps this process took, skipped included (from 0 in every process).", labels);
  images_total_ = add_counter(r, "difftrain_images_total", "Images this rank processed in this process.", labels);
  skipped_steps_total_ = add_counter(r, "difftrain_skipped_steps_total",
                                     "Steps the optimizer did not apply: fp16 overflow or non-finite.", labels);
  nonfinite_steps_total_ = add_counter(r, "difftrain_nonfinite_steps_total",
                                       "Steps whose loss or gradients were non-finite.", labels);
  rollbacks_total_ = add_counter(r, "difftrain_rollbacks_total",
                                 "Times the non-finite guard rolled the run back to a checkpoint.", labels);

  if (!options.pushgateway.empty())
    pushgateway_ = std::make_unique<Pushgateway>(options.pushgateway, identity, registry_, "monitoring.pushgateway");
  // Throws std::runtime_error naming the address when it cannot listen.
  if (!options.bind_address.empty()) server_ = std::make_unique<MetricsHttpServer>(options.bind_address, registry_);
}

TrainingMetrics::~TrainingMetrics() {
  if (state_ != JobState::kRunning) return;
  set_state(JobState::kFailed);
  push();
}

void TrainingMetrics::start(int64_t step, int64_t images_seen) {
  step_->Set(static_cast<double>(step));
  images_seen_->Set(static_cast<double>(images_seen));
  push();
}

void TrainingMetrics::record_step(const StepStats& stats) {
  loss_->Set(stats.loss);
  learning_rate_->Set(stats.learning_rate);
  step_seconds_->Set(stats.step_seconds);
  comm_wait_seconds_->Set(stats.comm_wait_seconds);
  images_per_second_->Set(stats.images_per_second);
  if (!stats.skipped) grad_norm_->Set(stats.grad_norm);
  loss_scale_->Set(stats.loss_scale);
  step_->Set(static_cast<double>(stats.step));
  images_seen_->Set(static_cast<double>(stats.images_seen));
  steps_total_->Increment();
  images_total_->Increment(static_cast<double>(stats.images));
  if (stats.skipped) skipped_steps_total_->Increment();
  if (stats.nonfinite || !std::isfinite(stats.loss)) nonfinite_steps_total_->Increment();
  last_step_timestamp_->Set(unix_now());
}

void TrainingMetrics::record_nonfinite_step() {
  nonfinite_steps_total_->Increment();
  skipped_steps_total_->Increment();
}

void TrainingMetrics::record_rollback() { rollbacks_total_->Increment(); }

void TrainingMetrics::set_fid(double fid) { fid_->Set(fid); }

void TrainingMetrics::finish(JobState state) {
  set_state(state);
  push();
}

void TrainingMetrics::set_state(JobState state) {
  state_ = state;
  job_state_->Set(state);
}

void TrainingMetrics::push() {
  if (pushgateway_) pushgateway_->push();
}

std::string TrainingMetrics::bound_address() const { return server_ ? server_->bound_address() : std::string(); }

}  // namespace difftrain::monitoring
