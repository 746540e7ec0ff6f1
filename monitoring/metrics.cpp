#include "monitoring/metrics.h"

#include "monitoring/metrics_http_server.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

namespace difftrain::monitoring {
namespace {

prometheus::Gauge* add_gauge(prometheus::Registry& registry, const std::string& name,
                             const std::string& help, const prometheus::Labels& labels) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(labels);
}

prometheus::Counter* add_counter(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help, const prometheus::Labels& labels) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(labels);
}

}  // namespace

TrainingMetrics::TrainingMetrics(const std::string& bind_address, int rank)
    : registry_(std::make_shared<prometheus::Registry>()) {
  const prometheus::Labels labels = {{"rank", std::to_string(rank)}};
  auto& r = *registry_;
  loss_ = add_gauge(r, "difftrain_loss", "Training loss of the last step.", labels);
  learning_rate_ = add_gauge(r, "difftrain_learning_rate", "Learning rate of the last step.", labels);
  step_seconds_ = add_gauge(r, "difftrain_step_seconds", "Wall time of the last step.", labels);
  comm_wait_seconds_ = add_gauge(r, "difftrain_comm_wait_seconds",
                                 "Part of the last step spent waiting for gradient all-reduces (not hidden "
                                 "behind backward).",
                                 labels);
  images_per_second_ =
      add_gauge(r, "difftrain_images_per_second", "Images per second this rank processed.", labels);
  grad_norm_ = add_gauge(r, "difftrain_grad_norm", "Global gradient L2 norm before clipping.", labels);
  loss_scale_ = add_gauge(r, "difftrain_loss_scale", "fp16 dynamic loss scale.", labels);
  step_ = add_gauge(r, "difftrain_step", "Current optimizer step (continues across resumes).", labels);
  fid_ = add_gauge(r, "difftrain_fid", "FID of the latest training-time evaluation point (eval.every).", labels);
  fid_->Set(std::numeric_limits<double>::quiet_NaN());
  steps_total_ = add_counter(r, "difftrain_steps_total", "Optimizer steps taken, skipped included.", labels);
  images_total_ = add_counter(r, "difftrain_images_total", "Images this rank processed.", labels);
  skipped_steps_total_ = add_counter(r, "difftrain_skipped_steps_total",
                                     "Steps skipped because fp16 gradients overflowed.", labels);

  // Throws std::runtime_error naming the address when it cannot listen.
  server_ = std::make_unique<MetricsHttpServer>(bind_address, registry_);
}

TrainingMetrics::~TrainingMetrics() = default;

void TrainingMetrics::record_step(const StepStats& stats) {
  loss_->Set(stats.loss);
  learning_rate_->Set(stats.learning_rate);
  step_seconds_->Set(stats.step_seconds);
  comm_wait_seconds_->Set(stats.comm_wait_seconds);
  images_per_second_->Set(stats.images_per_second);
  grad_norm_->Set(stats.grad_norm);
  loss_scale_->Set(stats.loss_scale);
  step_->Increment();
  steps_total_->Increment();
  images_total_->Increment(static_cast<double>(stats.images));
  if (stats.skipped) skipped_steps_total_->Increment();
}

void TrainingMetrics::set_step(int64_t step) {
  step_->Set(static_cast<double>(step));
  const double behind = static_cast<double>(step) - steps_total_->Value();
  if (behind > 0) steps_total_->Increment(behind);
}

void TrainingMetrics::set_fid(double fid) { fid_->Set(fid); }

std::string TrainingMetrics::bound_address() const { return server_->bound_address(); }

}  // namespace difftrain::monitoring
