#include "trainer/step_profiler.h"

#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <cstdlib>
#include <stdexcept>

namespace difftrain {

struct StepProfiler::Recording {
  explicit Recording(const std::string& path) : guard(path) {}
  torch::autograd::profiler::RecordProfile guard;  // writes the trace when destroyed
};

StepProfiler::StepProfiler(int rank) {
  const char* path = std::getenv("DIFFTRAIN_PROFILE");
  if (path == nullptr || *path == '\0') return;
  path_ = path;
  if (rank > 0) path_ += ".rank" + std::to_string(rank);
  if (const char* steps = std::getenv("DIFFTRAIN_PROFILE_STEPS"); steps != nullptr && *steps != '\0') {
    long long first = 0, count = 0;
    char tail = 0;
    if (std::sscanf(steps, "%lld:%lld%c", &first, &count, &tail) != 2 || first < 1 || count < 1) {
      throw std::invalid_argument(std::string("environment variable DIFFTRAIN_PROFILE_STEPS='") + steps +
                                  "': expected FIRST:COUNT, two positive whole numbers (e.g. 3:3)");
    }
    first_ = first;
    count_ = count;
  }
}

StepProfiler::~StepProfiler() = default;

void StepProfiler::before_step(int64_t iteration) {
  if (path_.empty() || iteration != first_) return;
  recording_ = std::make_unique<Recording>(path_);
}

void StepProfiler::after_step(int64_t iteration) {
  if (!recording_ || iteration != first_ + count_ - 1) return;
  recording_.reset();
  spdlog::info("profile of steps {}..{} (this process's optimizer steps) written to {}", first_, iteration, path_);
}

}  // namespace difftrain
