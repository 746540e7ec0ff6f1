// Registry helpers shared by TrainingMetrics and JobPush (not part of the
// monitoring interface: it includes prometheus-cpp, which the public headers
// only forward-declare).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <string>

#include "monitoring/pushgateway.h"

namespace difftrain::monitoring {

// The labels every difftrain series carries: run, host, rank.
inline prometheus::Labels identity_labels(const PushIdentity& id) {
  return {{"run", id.run}, {"host", id.host}, {"rank", std::to_string(id.rank)}};
}

inline prometheus::Gauge* add_gauge(prometheus::Registry& registry, const std::string& name, const std::string& help,
                                    const prometheus::Labels& labels) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(labels);
}

inline prometheus::Counter* add_counter(prometheus::Registry& registry, const std::string& name,
                                        const std::string& help, const prometheus::Labels& labels) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(labels);
}

// A gauge whose series exists only once it has a value: before that a scrape
// has no sample for it (Grafana: "no data"), rather than a misleading 0.
class LazyGauge {
 public:
  LazyGauge(prometheus::Registry& registry, const std::string& name, const std::string& help,
            prometheus::Labels labels)
      : family_(&prometheus::BuildGauge().Name(name).Help(help).Register(registry)), labels_(std::move(labels)) {}
  void Set(double value) {
    if (!gauge_) gauge_ = &family_->Add(labels_);
    gauge_->Set(value);
  }

 private:
  prometheus::Family<prometheus::Gauge>* family_;
  prometheus::Labels labels_;
  prometheus::Gauge* gauge_ = nullptr;
};

// difftrain_job_state{state="running|finished|stopped|failed"}: one series per
// state, 1 for the current one and 0 for the others (the Prometheus enum idiom).
class JobStateGauge {
 public:
  JobStateGauge(prometheus::Registry& registry, const prometheus::Labels& labels) {
    auto& family = prometheus::BuildGauge()
                       .Name("difftrain_job_state")
                       .Help("Job state: 1 for the current state label (running, finished, stopped, failed), 0 "
                             "for the others.")
                       .Register(registry);
    for (const JobState s : {JobState::kRunning, JobState::kFinished, JobState::kStopped, JobState::kFailed}) {
      auto with_state = labels;
      with_state["state"] = job_state_name(s);
      gauges_[static_cast<int>(s)] = &family.Add(with_state);
    }
    Set(JobState::kRunning);
  }
  void Set(JobState state) {
    for (int s = 0; s < 4; ++s) gauges_[s]->Set(s == static_cast<int>(state) ? 1 : 0);
  }

 private:
  prometheus::Gauge* gauges_[4] = {};
};

}  // namespace difftrain::monitoring
