// The console progress line printed by rank 0, e.g.
//   step  120/2000 ( 6.0%)  loss 0.0812  312.4 img/s  ETA 4m12s
// Pure functions, so the format is tested without a training loop.
#pragma once

#include <cstdint>
#include <string>

namespace difftrain::monitoring {

// ETA = (total - step) * seconds_per_step; shown as "--" until a step time is known.
std::string format_progress(int64_t step, int64_t total, double loss, double images_per_second,
                            double seconds_per_step);

// Compact duration, rounded to whole seconds: "12s", "4m05s", "1h02m".
// Negative or non-finite input gives "--".
std::string format_duration(double seconds);

}  // namespace difftrain::monitoring
