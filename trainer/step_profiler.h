// LibTorch's profiler around a few training steps, from C++ (issue 12: profile first).
//
// DIFFTRAIN_PROFILE=trace.json in the environment records every ATen operator of the
// optimizer steps in DIFFTRAIN_PROFILE_STEPS ("FIRST:COUNT", default "3:3": after two
// warm-up steps, whose first calls JIT-compile oneDNN kernels) and writes them as a
// Chrome trace (chrome://tracing, Perfetto) when the last one ends. Each rank writes its
// own file: rank r > 0 appends ".rank<r>". `bench/profile_summary.py trace.json` prints
// the self time per operator, as torch.profiler's key_averages() table does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace difftrain {

class StepProfiler {
 public:
  // Reads the environment; inactive (every call a no-op) without DIFFTRAIN_PROFILE.
  // Throws std::invalid_argument naming DIFFTRAIN_PROFILE_STEPS when it is malformed.
  explicit StepProfiler(int rank);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // Around each optimizer step; iteration counts from 1 in this process.
  void before_step(int64_t iteration);
  void after_step(int64_t iteration);

 private:
  struct Recording;
  std::string path_;
  int64_t first_ = 3, count_ = 3;
  std::unique_ptr<Recording> recording_;
};

}  // namespace difftrain
