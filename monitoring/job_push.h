// JobPush: progress, results and final state of a short job (`sample`,
// `eval sweep`) pushed to a Prometheus Pushgateway (--pushgateway host:port).
// Such a job has no /metrics endpoint; the gateway keeps its last values after
// it ends. Series carry run (the output directory's name), host and rank.
//
// Threading: one owner thread calls every method.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "monitoring/pushgateway.h"

namespace prometheus {
class Gauge;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace difftrain::monitoring {

class JobStateGauge;

class JobPush {
 public:
  // Pushes state running at once. Throws std::invalid_argument for a malformed
  // gateway address, naming `setting` (e.g. "--pushgateway").
  JobPush(const std::string& gateway, const PushIdentity& identity, const std::string& setting,
          std::chrono::milliseconds interval = std::chrono::seconds(2));
  // Still running (the job left by an exception): pushes state failed.
  ~JobPush();

  JobPush(const JobPush&) = delete;
  JobPush& operator=(const JobPush&) = delete;

  // difftrain_job_images_done / _total; pushed at most once per interval (and the final values by finish).
  void progress(double done, int64_t total);
  // difftrain_sweep_fid{sampler, steps, guidance, eta}: one FID point of a sweep, pushed at once.
  void record_fid(const std::string& sampler, int64_t steps, double guidance, double eta, double fid);
  // Final state (finished; failed is the destructor's) and everything, pushed.
  void finish(JobState state);

 private:
  using Clock = std::chrono::steady_clock;
  void push();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Pushgateway> gateway_;
  std::unique_ptr<JobStateGauge> state_gauge_;
  prometheus::Gauge* images_done_;
  prometheus::Gauge* images_total_;
  prometheus::Gauge* last_progress_timestamp_;
  prometheus::Family<prometheus::Gauge>* sweep_fid_;
  std::string run_, host_, rank_;
  JobState state_ = JobState::kRunning;
  std::chrono::milliseconds interval_;
  Clock::time_point last_push_;
};

}  // namespace difftrain::monitoring
