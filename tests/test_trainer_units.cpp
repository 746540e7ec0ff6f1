#include <gtest/gtest.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "model/unet.h"
#include "tests/test_dirs.h"
#include "trainer/checkpoint.h"
#include "trainer/communicator.h"
#include "trainer/ema.h"
#include "trainer/loss_scaler.h"
#include "trainer/lr_schedule.h"
#include "trainer/mpi_session.h"

namespace fs = std::filesystem;
using namespace difftrain;

namespace {
MpiSession* g_session = nullptr;

}  // namespace

TEST(LearningRate, WarmupThenCosineToTheFloor) {
  EXPECT_DOUBLE_EQ(learning_rate_at(0, 1.0, 10, 110, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate_at(9, 1.0, 10, 110, 0.1), 1.0);
  EXPECT_NEAR(learning_rate_at(10, 1.0, 10, 110, 0.1), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate_at(60, 1.0, 10, 110, 0.1), 0.55, 1e-12);  // half-way: floor + half the range
  EXPECT_NEAR(learning_rate_at(110, 1.0, 10, 110, 0.1), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate_at(500, 1.0, 10, 110, 0.1), 0.1, 1e-12);
}

TEST(Ema, FollowsTheExponentialAverage) {
  torch::nn::Linear model(2, 1), shadow(2, 1);
  copy_weights(*model, *shadow);
  Ema ema(*model, *shadow, 0.9);
  const auto start = shadow->weight.clone();
  {
    torch::NoGradGuard g;
    model->weight.add_(1.0);
  }
  ema.update(1000);  // warm-up long over: decay 0.9
  EXPECT_TRUE(torch::allclose(shadow->weight, start + 0.1));
  EXPECT_NEAR(ema.decay_at(0), 0.1, 1e-12);  // (1 + 0) / (10 + 0)
}

TEST(LossScaler, HalvesOnOverflowAndGrowsAfterCleanSteps) {
  DynamicLossScaler scaler(true, 1024.0, 3);
  auto g = torch::full({2}, 2048.0);
  EXPECT_TRUE(scaler.unscale_and_check({g}));
  EXPECT_TRUE(torch::allclose(g, torch::full({2}, 2.0)));
  auto bad = torch::tensor({1.0, std::numeric_limits<double>::infinity()});
  EXPECT_FALSE(scaler.unscale_and_check({bad}));
  scaler.update(false);
  EXPECT_DOUBLE_EQ(scaler.scale(), 512.0);
  for (int i = 0; i < 3; ++i) scaler.update(true);
  EXPECT_DOUBLE_EQ(scaler.scale(), 1024.0);
  DynamicLossScaler off(false);
  EXPECT_DOUBLE_EQ(off.scale(), 1.0);
}

TEST(Checkpoint, SavesAtomicallyLoadsBackAndKeepsTheNewest) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto run = fresh_test_dir();
  torch::nn::Linear model(3, 2), ema(3, 2), restored(3, 2), restored_ema(3, 2);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  model(torch::randn({4, 3})).sum().backward();
  opt.step();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  TrainingState state;
  state.step = 7, state.images_seen = 70, state.epoch = 1, state.samples_in_epoch = 30;
  for (int64_t step : {3, 5, 7}) {
    state.step = step;
    save_checkpoint(*comm, run.string(), state, {*model, *ema, opt, gen.get_state()}, "train: {}\n", 2);
  }
  EXPECT_FALSE(fs::exists(fs::path(checkpoints_dir(run.string())) / checkpoint_name(3)));
  const auto latest = latest_checkpoint(run.string());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename().string(), checkpoint_name(7));
  EXPECT_EQ(resolve_checkpoint(run.string()), *latest);

  torch::optim::AdamW opt2(restored->parameters(), torch::optim::AdamWOptions(1e-3));
  CheckpointContents into{*restored, *restored_ema, opt2, torch::Tensor()};
  const auto loaded = load_checkpoint(*latest, 0, into);
  EXPECT_EQ(loaded.step, 7);
  EXPECT_EQ(loaded.samples_in_epoch, 30);
  EXPECT_TRUE(torch::equal(restored->weight, model->weight));
  EXPECT_EQ(weights_fingerprint(*restored), weights_fingerprint(*model));
  at::Generator other = at::make_generator<at::CPUGeneratorImpl>(99);
  other.set_state(into.rng_state);
  EXPECT_TRUE(torch::equal(torch::randn({4}, other), torch::randn({4}, gen)));
  fs::remove_all(run);
}

TEST(Checkpoint, IncompleteDirectoriesAreIgnoredAndMissingOnesNamed) {
  const auto run = fresh_test_dir();
  fs::create_directories(fs::path(checkpoints_dir(run.string())) / ".tmp-step-9");
  fs::create_directories(fs::path(checkpoints_dir(run.string())) / checkpoint_name(9));  // no state.json
  EXPECT_FALSE(latest_checkpoint(run.string()).has_value());
  remove_incomplete_checkpoints(run.string());
  EXPECT_FALSE(fs::exists(fs::path(checkpoints_dir(run.string())) / ".tmp-step-9"));
  try {
    resolve_checkpoint((run / "nope").string());
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("nope' does not exist"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_checkpoint(run.string()), CheckpointError);
  fs::remove_all(run);
}

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  g_session = &session;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
