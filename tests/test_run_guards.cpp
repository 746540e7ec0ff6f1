// The trainer's pure run guards: the non-finite step policy, the throughput
// window that leaves evaluation time out, and the run-directory lock.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "tests/test_dirs.h"
#include "trainer/nonfinite_guard.h"
#include "trainer/run_lock.h"
#include "trainer/throughput_window.h"

namespace difftrain {
namespace {

TEST(NonfiniteGuard, SkipsUntilPatienceThenRollsBackThenStops) {
  NonfiniteGuard guard(/*patience=*/3, /*roll_back=*/true, /*max_rollbacks=*/1);
  EXPECT_EQ(guard.observe(true), StepVerdict::kApply);
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(true), StepVerdict::kApply);  // a finite step resets the streak
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(false), StepVerdict::kRollBack);
  guard.rolled_back();
  EXPECT_EQ(guard.streak(), 0);
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(false), StepVerdict::kSkip);
  EXPECT_EQ(guard.observe(false), StepVerdict::kStop);  // max_rollbacks used up
  EXPECT_EQ(guard.total(), 8);
  EXPECT_EQ(guard.rollbacks(), 1);
}

TEST(NonfiniteGuard, StopPolicyAndPatienceOne) {
  NonfiniteGuard stop(/*patience=*/1, /*roll_back=*/false, /*max_rollbacks=*/5);
  EXPECT_EQ(stop.observe(false), StepVerdict::kStop);
}

TEST(ThroughputWindow, EvaluationTimeIsLeftOutOfTheInterval) {
  // Log at step 10 (t = 100 s); steps 11..15 take 1 s each, with a 40 s FID
  // evaluation after step 12; the next log at step 15 sees 5 steps in 5 s.
  ThroughputWindow window;
  window.start(10, 100.0);
  window.exclude(40.0);
  EXPECT_EQ(window.steps(15), 5);
  EXPECT_DOUBLE_EQ(window.training_seconds(145.0), 5.0);
  EXPECT_DOUBLE_EQ(window.steps_per_second(15, 145.0), 1.0);
  window.start(15, 145.0);  // a new interval forgets what was excluded before
  EXPECT_DOUBLE_EQ(window.steps_per_second(17, 147.0), 1.0);
}

TEST(RunDirectoryLock, SecondHolderIsRefusedAndTheLockDiesWithItsProcess) {
  const auto dir = fresh_test_dir();
  {
    RunDirectoryLock lock(dir.string());
    // Another process (flock is per open file description: a fork that opens again competes).
    const pid_t child = ::fork();
    if (child == 0) {
      try {
        RunDirectoryLock second(dir.string());
        ::_exit(0);
      } catch (const std::runtime_error& e) {
        ::_exit(std::string(e.what()).find("in use by another training job") != std::string::npos ? 3 : 4);
      }
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    EXPECT_EQ(WEXITSTATUS(status), 3);
  }
  // Released with the holder: the next one gets it.
  RunDirectoryLock again(dir.string());
  SUCCEED();
}

}  // namespace
}  // namespace difftrain
