#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "model/unet.h"
#include "tests/test_dirs.h"
#include "trainer/checkpoint.h"
#include "distributed/weights_agreement.h"
#include "distributed/communicator.h"
#include "trainer/ema.h"
#include "distributed/gradient_reducer.h"
#include "trainer/loss_scaler.h"
#include "trainer/lr_schedule.h"
#include "distributed/mpi_session.h"
#include "trainer/sample_draws.h"
#include "distributed/stall_report.h"

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


TEST(PlanBuckets, ReverseOrderFilledUpToTheCapAndBigParametersAlone) {
  // bytes of parameters 0..5; backward produces the last first.
  const std::vector<int64_t> bytes = {10, 30, 100, 20, 20, 5};
  const std::vector<std::vector<size_t>> expected = {{5, 4, 3}, {2}, {1, 0}};
  EXPECT_EQ(plan_buckets(bytes, 50, 1000), expected);
  const std::vector<std::vector<size_t>> one = {{5, 4, 3, 2, 1, 0}};
  EXPECT_EQ(plan_buckets(bytes, 1000, 1000), one);  // the cap above the model: one bucket
  const std::vector<std::vector<size_t>> small_first = {{5}, {4, 3, 2, 1, 0}};
  EXPECT_EQ(plan_buckets(bytes, 1000, 10), small_first);  // the first bucket has its own, smaller cap
  const auto each = plan_buckets(bytes, 1, 1);
  EXPECT_EQ(each.size(), bytes.size());  // every parameter over the cap: one bucket each
  EXPECT_THROW(plan_buckets(bytes, 0, 1), std::invalid_argument);
}

TEST(ArrivalBoard, NamesTheRanksThatDidNotJoinAndWhatTheyLastJoined) {
  ArrivalBoard board(4);
  board.name(6, "stop flag");
  board.name(7, "gradients: bucket 1 of 2");
  for (int r : {0, 1, 2, 3}) board.arrive(r, 6);
  board.arrive(0, 7);
  board.arrive(2, 7);
  EXPECT_EQ(board.missing(7), (std::vector<int>{1, 3}));
  EXPECT_EQ(board.describe_stall(7),
            "ranks 1 and 3 did not join collective #7 'gradients: bucket 1 of 2' (rank 1: last joined #6 'stop "
            "flag'; rank 3: last joined #6 'stop flag')");
  board.arrive(1, 7);
  board.arrive(3, 7);
  EXPECT_TRUE(board.missing(7).empty());
  EXPECT_EQ(board.describe_stall(7),
            "every rank joined collective #7 'gradients: bucket 1 of 2', yet it did not complete: a network link "
            "between ranks is down or too slow");
  EXPECT_EQ(board.describe_stall(7, {2}),
            "every rank joined collective #7 'gradients: bucket 1 of 2', yet it did not complete; rank 2 does not "
            "answer at all (stopped, crashed or unreachable)");
  EXPECT_EQ(board.describe_stall(8, {1, 3}).substr(0, 41), "ranks 0, 1, 2 and 3 did not join collecti");
  EXPECT_NE(board.describe_stall(8, {1, 3}).find("; ranks 1 and 3 do not answer at all"), std::string::npos);
  ArrivalBoard fresh(2);
  EXPECT_NE(fresh.describe_stall(0).find("rank 0: joined none yet"), std::string::npos);
  EXPECT_EQ(list_ranks({2, 5, 9}), "2, 5 and 9");
}

TEST(GradientReducer, OneRankGradientsAreBucketViewsThatAccumulate) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 3));
  auto params = net->parameters();
  auto reference = torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 3));
  {
    torch::NoGradGuard g;
    for (size_t k = 0; k < params.size(); ++k) reference->parameters()[k].copy_(params[k]);
  }
  GradientReducer reducer(params, *comm, /*cap bytes*/ 64, 64);  // several buckets
  EXPECT_GT(reducer.bucket_count(), 1u);
  const auto x1 = torch::randn({5, 4}), x2 = torch::randn({5, 4});
  reducer.zero_grad();
  reducer.begin_backward(false);
  net->forward(x1).sum().backward();
  reducer.begin_backward(true);
  net->forward(x2).sum().backward();
  reducer.finish();
  (reference->forward(x1).sum() + reference->forward(x2).sum()).backward();
  for (size_t k = 0; k < params.size(); ++k) {
    EXPECT_TRUE(torch::allclose(reducer.gradients()[k], reference->parameters()[k].grad(), 1e-6, 1e-6)) << k;
    EXPECT_EQ(params[k].grad().data_ptr(), reducer.gradients()[k].data_ptr()) << "grad is not the bucket view";
  }
  EXPECT_EQ(reducer.last_step().buckets, static_cast<int64_t>(reducer.bucket_count()));
  reducer.zero_grad();
  for (const auto& g : reducer.gradients()) EXPECT_EQ(g.abs().sum().item<double>(), 0.0);
  EXPECT_THROW(reducer.finish(), std::logic_error);  // finish without a synchronising backward
}

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  g_session = &session;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
