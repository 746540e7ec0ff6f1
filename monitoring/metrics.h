// TrainingMetrics: one Prometheus /metrics endpoint per rank, exporting the
// training loop's step statistics. Every metric carries the label rank="N" so
// a dashboard can show ranks side by side or sum them.
//
// Threading: record_step/set_step may be called from any thread; the HTTP
// server (MetricsHttpServer) answers scrapes on its own thread and only reads
// the registry; prometheus-cpp metrics are atomic, so no lock is needed here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace prometheus {
class Counter;
class Gauge;
class Registry;
}  // namespace prometheus

namespace difftrain::monitoring {

class MetricsHttpServer;

// What one optimizer step reports. `skipped` marks an fp16 step whose
// gradients overflowed, so the optimizer did not apply it.
struct StepStats {
  double loss = 0;
  double learning_rate = 0;
  double step_seconds = 0;
  double images_per_second = 0;
  double grad_norm = 0;
  double loss_scale = 0;
  int64_t images = 0;  // images this rank processed in the step
  bool skipped = false;
  double comm_wait_seconds = 0;  // the training thread waiting for gradient all-reduces to finish
};

class TrainingMetrics {
 public:
  // bind_address is "host:port", e.g. "127.0.0.1:9400"; port 0 picks a free
  // port (see bound_address()). Throws std::runtime_error when it cannot listen.
  TrainingMetrics(const std::string& bind_address, int rank);
  ~TrainingMetrics();

  TrainingMetrics(const TrainingMetrics&) = delete;
  TrainingMetrics& operator=(const TrainingMetrics&) = delete;

  // Advances difftrain_step by one and the counters by this step's amounts.
  void record_step(const StepStats& stats);

  // Called once on resume: sets difftrain_step and raises
  // difftrain_steps_total to `step`, so the counter continues the previous
  // run's series instead of restarting at zero.
  void set_step(int64_t step);
  // Latest training-time FID point (eval.every); NaN until the first.
  void set_fid(double fid);

  // "host:port" actually listened on (the real port when 0 was asked for).
  std::string bound_address() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsHttpServer> server_;  // declared after registry_: stops before it goes

  // Owned by registry_; pointers stay valid for its lifetime.
  prometheus::Gauge* loss_;
  prometheus::Gauge* learning_rate_;
  prometheus::Gauge* step_seconds_;
  prometheus::Gauge* comm_wait_seconds_;
  prometheus::Gauge* images_per_second_;
  prometheus::Gauge* grad_norm_;
  prometheus::Gauge* loss_scale_;
  prometheus::Gauge* step_;
  prometheus::Gauge* fid_;
  prometheus::Counter* steps_total_;
  prometheus::Counter* images_total_;
  prometheus::Counter* skipped_steps_total_;
};

}  // namespace difftrain::monitoring
