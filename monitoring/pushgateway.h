// What a job's metrics share whether scraped or pushed: its state (the
// Prometheus enum idiom), its identity labels, and Pushgateway, which pushes a
// registry to a Prometheus Pushgateway (prometheus-cpp's push library) for
// jobs that end before Prometheus would scrape their last values.
//
// Threading: Pushgateway::push runs the HTTP request on a helper thread and
// waits for it at most the deadline, so an unreachable gateway never holds the
// job up longer than that; a request still running then is left to finish on
// its own (it keeps the gateway and registry alive).
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace prometheus {
class Gateway;
class Registry;
}  // namespace prometheus

namespace difftrain::monitoring {

// difftrain_job_state{state=...}: 1 for the current state, 0 for the others.
enum class JobState { kRunning, kFinished, kStopped, kFailed };
const char* job_state_name(JobState state);  // "running", "finished", "stopped", "failed"

// gethostname(), the `host` label of every series ("unknown" if it fails).
std::string local_hostname();
// Unix time this process started (/proc/self/stat), for
// difftrain_process_start_time_seconds: a dashboard sees a restart as a new value.
double process_start_time_seconds();

// The run label a directory gives by default: its last component
// ("runs/shapes/" -> "shapes", "." -> the working directory's name).
std::string run_name_of_dir(const std::string& dir);

// "host:port" with a non-empty host and a port in 1..65535 (monitoring.pushgateway, --pushgateway).
bool is_host_port(const std::string& address);

// Who pushes: the grouping key is job="difftrain", run, instance=host, rank
// (Pushgateway keeps one group per key; a later push replaces the same-named
// metrics of its group).
struct PushIdentity {
  std::string run;
  std::string host;
  int rank = 0;
};

class Pushgateway {
 public:
  // address is "host:port"; throws std::invalid_argument naming `setting` (the
  // config key or option it came from) when it is not.
  Pushgateway(const std::string& address, const PushIdentity& identity,
              std::shared_ptr<prometheus::Registry> registry, const std::string& setting,
              std::chrono::milliseconds deadline = std::chrono::seconds(5));
  ~Pushgateway();

  Pushgateway(const Pushgateway&) = delete;
  Pushgateway& operator=(const Pushgateway&) = delete;

  // Pushes the registry's current values. Never throws: on failure (gateway
  // down, an error status, no answer within the deadline) it logs one warning
  // the first time (later failures at debug level) and returns false.
  bool push();

  const std::string& address() const { return address_; }

 private:
  std::string address_, setting_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Gateway> gateway_;
  std::chrono::milliseconds deadline_;
  bool warned_ = false;
};

}  // namespace difftrain::monitoring
