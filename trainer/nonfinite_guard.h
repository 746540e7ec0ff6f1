// What the trainer does with a step whose gradients are not finite.
//
// Trusted trainers do not train through NaN: EDM's training loop replaces
// non-finite gradients with zeros and PyTorch's GradScaler skips the step.
// Here a non-finite step is skipped (no optimizer step, no EMA update) and
// counted; `patience` consecutive ones mean the run has diverged, and the
// trainer either rolls back to the newest verified checkpoint and goes on with
// the next data (the data position is not rewound, so the same batch cannot
// trigger the same blow-up), at most `max_rollbacks` times, or stops with an
// error naming the step. The decision is taken from the all-reduced gradients,
// so every rank takes the same one.
//
// With fp16 the loss scaler owns overflow: its skips count here only once the
// scale has reached its floor (1), where an overflow is no longer the scale's.
#pragma once

#include <cstdint>

namespace difftrain {

enum class StepVerdict { kApply, kSkip, kRollBack, kStop };

class NonfiniteGuard {
 public:
  NonfiniteGuard(int64_t patience, bool roll_back, int64_t max_rollbacks)
      : patience_(patience), roll_back_(roll_back), max_rollbacks_(max_rollbacks) {}

  // Called once per optimizer step with whether its gradients were finite.
  StepVerdict observe(bool finite) {
    if (finite) {
      streak_ = 0;
      return StepVerdict::kApply;
    }
    ++streak_, ++total_;
    if (streak_ < patience_) return StepVerdict::kSkip;
    return roll_back_ && rollbacks_ < max_rollbacks_ ? StepVerdict::kRollBack : StepVerdict::kStop;
  }
  // After the trainer restored a checkpoint on kRollBack.
  void rolled_back() { ++rollbacks_, streak_ = 0; }

  int64_t streak() const { return streak_; }    // consecutive non-finite steps up to now
  int64_t total() const { return total_; }      // non-finite steps in this process
  int64_t rollbacks() const { return rollbacks_; }
  int64_t patience() const { return patience_; }

 private:
  int64_t patience_;
  bool roll_back_;
  int64_t max_rollbacks_;
  int64_t streak_ = 0, total_ = 0, rollbacks_ = 0;
};

}  // namespace difftrain
