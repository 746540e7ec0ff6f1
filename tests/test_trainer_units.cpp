#include <gtest/gtest.h>
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
#include "trainer/sample_draws.h"

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
  TrainingState state;
  state.step = 7, state.images_seen = 70, state.epoch = 1, state.samples_in_epoch = 30;
  for (int64_t step : {3, 5, 7}) {
    state.step = step;
    save_checkpoint(*comm, run.string(), state, {*model, *ema, opt}, "train: {}\n", 2);
  }
  EXPECT_FALSE(fs::exists(fs::path(checkpoints_dir(run.string())) / checkpoint_name(3)));
  const auto latest = latest_checkpoint(run.string());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename().string(), checkpoint_name(7));
  EXPECT_EQ(resolve_checkpoint(run.string()), *latest);

  torch::optim::AdamW opt2(restored->parameters(), torch::optim::AdamWOptions(1e-3));
  CheckpointContents into{*restored, *restored_ema, opt2};
  const auto loaded = load_checkpoint(*latest, into);
  EXPECT_EQ(loaded.step, 7);
  EXPECT_EQ(loaded.samples_in_epoch, 30);
  EXPECT_TRUE(torch::equal(restored->weight, model->weight));
  EXPECT_EQ(weights_fingerprint(*restored), weights_fingerprint(*model));
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

TEST(SampleDraws, DependOnTheSampleNotOnRanksOrBatchSize) {
  // 1 rank x batch 8 sees epoch positions 16..23 (batch 2); 2 ranks x batch 4 see 16, 18, .. and 17, 19, ..
  const auto one = draw_samples(11, 3, 16, 1, 8, 1000, {3, 4, 4}, 0.5);
  const auto rank0 = draw_samples(11, 3, 16, 2, 4, 1000, {3, 4, 4}, 0.5);
  const auto rank1 = draw_samples(11, 3, 17, 2, 4, 1000, {3, 4, 4}, 0.5);
  for (int64_t j = 0; j < 4; ++j) {
    EXPECT_TRUE(torch::equal(one.noise[2 * j], rank0.noise[j]));
    EXPECT_TRUE(torch::equal(one.noise[2 * j + 1], rank1.noise[j]));
    EXPECT_EQ(one.timesteps[2 * j + 1].item<int64_t>(), rank1.timesteps[j].item<int64_t>());
    EXPECT_EQ(one.drop[2 * j].item<bool>(), rank0.drop[j].item<bool>());
  }
  // Another epoch or seed: other draws; the drop rate follows the probability.
  EXPECT_FALSE(torch::equal(draw_samples(11, 4, 16, 1, 8, 1000, {3, 4, 4}, 0.5).noise, one.noise));
  EXPECT_FALSE(torch::equal(draw_samples(12, 3, 16, 1, 8, 1000, {3, 4, 4}, 0.5).noise, one.noise));
  const auto many = draw_samples(1, 0, 0, 1, 4000, 1000, {1}, 0.1);
  EXPECT_NEAR(many.drop.to(torch::kFloat64).mean().item<double>(), 0.1, 0.015);
  EXPECT_GE(many.timesteps.min().item<int64_t>(), 0);
  EXPECT_LT(many.timesteps.max().item<int64_t>(), 1000);
}

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  g_session = &session;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
