#include "monitoring/progress.h"

#include <cmath>
#include <cstdio>

namespace difftrain::monitoring {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const auto s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    // Seconds are noise at this scale; minutes keep the line short.
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string format_progress(int64_t step, int64_t total, double loss, double images_per_second,
                            double seconds_per_step) {
  // Pad the step to the width of the total so successive lines stay aligned.
  const int width = static_cast<int>(std::to_string(total).size());
  const double percent = total > 0 ? 100.0 * static_cast<double>(step) / static_cast<double>(total) : 0.0;
  const std::string eta =
      seconds_per_step > 0 ? format_duration(static_cast<double>(total - step) * seconds_per_step) : "--";
  char buf[160];
  std::snprintf(buf, sizeof buf, "step %*lld/%lld (%4.1f%%)  loss %.4f  %.1f img/s  ETA %s", width,
                static_cast<long long>(step), static_cast<long long>(total), percent, loss,
                images_per_second, eta.c_str());
  return buf;
}

std::string format_rate_progress(const std::string& label, double done, int64_t total, double seconds,
                                 const std::string& unit) {
  const double rate = seconds > 0 ? done / seconds : 0.0;
  const double percent = total > 0 ? 100.0 * done / static_cast<double>(total) : 0.0;
  const std::string eta = rate > 0 ? format_duration((static_cast<double>(total) - done) / rate) : "--";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %lld/%lld %s (%.1f%%)  %.1f %s/s  ETA %s", label.c_str(),
                static_cast<long long>(done + 1e-9), static_cast<long long>(total), unit.c_str(), percent, rate,
                unit == "images" ? "img" : unit.c_str(), eta.c_str());
  return buf;
}

RateProgress::RateProgress(std::string label, int64_t total, double interval_seconds, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), interval_(interval_seconds),
      start_(Clock::now()), last_print_(start_) {}

void RateProgress::update(double done) {
  const auto now = Clock::now();
  if (done < static_cast<double>(total_) && std::chrono::duration<double>(now - last_print_).count() < interval_) return;
  last_print_ = now;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "%s\n", format_rate_progress(label_, done, total_, seconds, unit_).c_str());
  std::fflush(stderr);
}

}  // namespace difftrain::monitoring
