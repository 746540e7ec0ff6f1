// The console progress line printed by rank 0, e.g.
//   step  120/2000 ( 6.0%)  loss 0.0812  312.4 img/s  ETA 4m12s
// Pure functions, so the format is tested without a training loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace difftrain::monitoring {

// ETA = (total - step) * seconds_per_step; shown as "--" until a step time is known.
std::string format_progress(int64_t step, int64_t total, double loss, double images_per_second,
                            double seconds_per_step);

// Compact duration, rounded to whole seconds: "12s", "4m05s", "1h02m".
// Negative or non-finite input gives "--".
std::string format_duration(double seconds);

// "sampling w=3: 640/2000 images (32.0%)  41.3 img/s  ETA 33s" after `seconds` of work.
std::string format_rate_progress(const std::string& label, double done, int64_t total, double seconds,
                                 const std::string& unit = "images");

// Prints format_rate_progress lines to stderr for long jobs (sampling, FID
// points): at most one every `interval_seconds`, and always the final one.
class RateProgress {
 public:
  RateProgress(std::string label, int64_t total, double interval_seconds = 5.0, std::string unit = "images");
  void update(double done);  // done of total so far (fractions of an image count toward the rate)

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_, unit_;
  int64_t total_;
  double interval_;
  Clock::time_point start_, last_print_;
};

}  // namespace difftrain::monitoring
