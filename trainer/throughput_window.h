// Throughput over one logging interval, with the time spent on work that is
// not training (training-time FID, validation grids) left out of it. Times are
// passed in, so the arithmetic is testable without a clock.
#pragma once

#include <cstdint>

namespace difftrain {

class ThroughputWindow {
 public:
  void start(int64_t step, double now_seconds) { step_ = step, start_ = now_seconds, excluded_ = 0; }
  // Seconds inside the interval that did not train.
  void exclude(double seconds) { excluded_ += seconds; }

  int64_t steps(int64_t step) const { return step - step_; }
  double training_seconds(double now_seconds) const { return now_seconds - start_ - excluded_; }
  // Optimizer steps per second of training time since start().
  double steps_per_second(int64_t step, double now_seconds) const {
    const double seconds = training_seconds(now_seconds);
    return seconds > 0 ? static_cast<double>(steps(step)) / seconds : 0;
  }

 private:
  int64_t step_ = 0;
  double start_ = 0, excluded_ = 0;
};

}  // namespace difftrain
