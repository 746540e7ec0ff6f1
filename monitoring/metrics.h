// TrainingMetrics: one Prometheus /metrics endpoint per rank, exporting the
// training loop's step statistics and the job's state, and (optionally) pushing
// them to a Pushgateway when the job starts and ends. Every series carries the
// labels run, host and rank, so a dashboard can tell runs, hosts and ranks apart
// (monitoring/README.md lists every metric).
//
// Restarts: counters start at 0 in every process (Prometheus' rate() handles
// the reset); the run's own totals, which continue across resumes, are gauges
// (difftrain_step, difftrain_images_seen), and difftrain_process_start_time_seconds
// changes with each process. Gauges that have no value yet (loss before the
// first step, fid before the first point) are not exported at all, so they read
// "no data", never 0.
//
// Threading: all methods are called from the training thread; the HTTP server
// (MetricsHttpServer) answers scrapes on its own thread and only reads the
// registry, which prometheus-cpp makes thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "monitoring/pushgateway.h"

namespace prometheus {
class Counter;
class Gauge;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace difftrain::monitoring {

class MetricsHttpServer;
class JobStateGauge;
class LazyGauge;

// What one optimizer step reports.
struct StepStats {
  double loss = 0;                 // NaN/inf for a non-finite step: exported as is, and counted (nonfinite)
  double learning_rate = 0;
  double step_seconds = 0;
  double images_per_second = 0;
  double grad_norm = 0;            // ignored for a skipped step (not computed then)
  double loss_scale = 0;
  int64_t images = 0;              // images this rank processed in the step
  bool skipped = false;            // the optimizer did not apply the step (fp16 overflow or non-finite)
  double comm_wait_seconds = 0;    // the training thread waiting for gradient all-reduces to finish
  bool nonfinite = false;          // the step's loss or gradients were non-finite (set by the trainer)
  int64_t step = 0;                // the run's step after this one (TrainingState::step; continues across resumes)
  int64_t images_seen = 0;         // the run's images after this step, all ranks (TrainingState::images_seen)
};

struct MetricsOptions {
  std::string bind_address;  // "host:port" served on (port 0: a free one); empty: no /metrics endpoint
  int rank = 0;
  std::string run;           // label run= (config run.name)
  std::string host;          // label host=; empty: gethostname()
  std::string pushgateway;   // "host:port" of a Pushgateway (monitoring.pushgateway); empty: no push
};

class TrainingMetrics {
 public:
  // Throws std::runtime_error naming the address when it cannot listen, and
  // std::invalid_argument for a malformed pushgateway address.
  explicit TrainingMetrics(const MetricsOptions& options);
  // Still running (train() left by an exception): sets state failed and pushes it.
  ~TrainingMetrics();

  TrainingMetrics(const TrainingMetrics&) = delete;
  TrainingMetrics& operator=(const TrainingMetrics&) = delete;

  // Once, before the first step: the run's totals so far (a resumed run's
  // checkpoint), then pushes state running.
  void start(int64_t step, int64_t images_seen);
  void record_step(const StepStats& stats);
  // A non-finite step the trainer did not complete (the one that ends a streak
  // and triggers a rollback or a stop): counted as non-finite and skipped, nothing else.
  void record_nonfinite_step();
  // The trainer's non-finite guard restored a checkpoint.
  void record_rollback();
  // Latest training-time FID point (eval.every); not exported before the first.
  void set_fid(double fid);
  // Sets the final state (finished, or stopped on a stop signal) and pushes everything.
  void finish(JobState state);

  // "host:port" actually listened on (the real port when 0 was asked for); empty without an endpoint.
  std::string bound_address() const;

 private:
  void set_state(JobState state);
  void push();

  JobState state_ = JobState::kRunning;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Pushgateway> pushgateway_;
  std::unique_ptr<MetricsHttpServer> server_;  // declared after registry_: stops before it goes

  // Owned by registry_; pointers stay valid for its lifetime.
  std::unique_ptr<LazyGauge> loss_, learning_rate_, step_seconds_, comm_wait_seconds_, images_per_second_,
      grad_norm_, loss_scale_, last_step_timestamp_, fid_;
  std::unique_ptr<JobStateGauge> job_state_;
  prometheus::Gauge* step_;
  prometheus::Gauge* images_seen_;
  prometheus::Counter* steps_total_;
  prometheus::Counter* images_total_;
  prometheus::Counter* skipped_steps_total_;
  prometheus::Counter* nonfinite_steps_total_;
  prometheus::Counter* rollbacks_total_;
};

}  // namespace difftrain::monitoring
