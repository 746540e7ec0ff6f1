#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include "model/unet.h"
#include "tests/test_dirs.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_manifest.h"
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

namespace {

// A small checkpointable state: a linear model, its EMA and an AdamW that has stepped once.
struct Tiny {
  torch::nn::Linear model{3, 2}, ema{3, 2};
  torch::optim::AdamW opt{model->parameters(), torch::optim::AdamWOptions(1e-3)};
  Tiny() {
    model(torch::randn({4, 3})).sum().backward();
    opt.step();
  }
  CheckpointContents contents() { return {*model, *ema, opt}; }
};

void save_steps(Communicator& comm, const fs::path& run, Tiny& t, std::initializer_list<int64_t> steps, int64_t keep) {
  TrainingState state;
  for (int64_t step : steps) {
    state.step = step, state.images_seen = 10 * step;
    save_checkpoint(comm, run.string(), state, t.contents(), "train: {}\n", keep);
  }
}

void flip_byte(const fs::path& path, size_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  const char c = static_cast<char>(f.get() ^ 0x01);
  f.seekp(static_cast<std::streamoff>(at));
  f.put(c);
}

std::string result_of(const CheckpointCheck& check, const std::string& name) {
  for (const auto& f : check.files)
    if (f.name == name) return f.result;
  return "(not reported)";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "(no CheckpointError)";
}

}  // namespace

TEST(Checkpoint, Sha256OfTheStandardTestVector) {
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Checkpoint, ManifestVerifiesEveryFileAndNamesTheDamage) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto run = fresh_test_dir();
  Tiny t;
  save_steps(*comm, run, t, {4}, 3);
  const fs::path dir = fs::path(checkpoints_dir(run.string())) / checkpoint_name(4);
  const auto good = verify_checkpoint(dir.string());
  EXPECT_TRUE(good.ok()) << good.problem;
  ASSERT_EQ(good.files.size(), 6u);
  EXPECT_EQ(good.files[0].name, "manifest.json");
  for (const auto& f : good.files) EXPECT_EQ(f.result, "ok") << f.name;

  flip_byte(dir / "optimizer.pt", 100);
  fs::resize_file(dir / "ema.pt", 10);
  fs::remove(dir / "config.yaml");
  const auto bad = verify_checkpoint(dir.string());
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(result_of(bad, "model.pt"), "ok");
  EXPECT_EQ(result_of(bad, "optimizer.pt").rfind("checksum mismatch (sha256 ", 0), 0u) << result_of(bad, "optimizer.pt");
  EXPECT_EQ(result_of(bad, "ema.pt").rfind("size mismatch (10 bytes, the manifest says ", 0), 0u);
  EXPECT_EQ(result_of(bad, "config.yaml"), "missing");
  Tiny into;
  const auto error = error_of([&] { load_checkpoint(dir.string(), into.contents()); });
  EXPECT_NE(error.find("ema.pt: size mismatch"), std::string::npos) << error;
  EXPECT_NE(error.find("optimizer.pt: checksum mismatch"), std::string::npos) << error;
  EXPECT_NE(error_of([&] { load_ema_weights(dir.string(), *into.ema); }).find("ema.pt: size mismatch"),
            std::string::npos);
  fs::remove_all(run);
}

TEST(Checkpoint, StateJsonIsValidatedNamingFileKeyAndValue) {
  const auto run = fresh_test_dir();
  const fs::path dir = run / checkpoint_name(5);
  fs::create_directories(dir);
  const auto error_for = [&](const std::string& json) {
    std::ofstream(dir / "state.json") << json;
    return error_of([&] { read_training_state(dir.string()); });
  };
  const std::string valid_tail =
      R"("images_seen": 50, "epoch": 0, "samples_in_epoch": 20, "loss_scale": 1.0, "loss_scale_clean_steps": 0, "world_size": 1})";
  EXPECT_EQ(error_for(R"({"step": 5, )" + valid_tail), "(no CheckpointError)");
  const std::pair<std::string, std::string> cases[] = {
      {R"({"step": -5, )" + valid_tail, "key 'step' = -5: expected an integer >= 0"},
      {R"({"step": "5", )" + valid_tail, "key 'step' = \"5\": expected an integer >= 0, not a JSON string"},
      {R"({"step": 5.0, )" + valid_tail, "key 'step' = 5.0: expected an integer >= 0, not a fraction"},
      {R"({"step": 7, )" + valid_tail, "key 'step' = 7: the directory's name says step 5"},
      {R"({"step": 5, "images_seen": -1, "epoch": 0, "samples_in_epoch": 0, "loss_scale": 1.0, "loss_scale_clean_steps": 0, "world_size": 1})",
       "key 'images_seen' = -1"},
      {R"({"step": 5, "images_seen": 1, "epoch": 0, "samples_in_epoch": 0, "loss_scale": 0, "loss_scale_clean_steps": 0, "world_size": 1})",
       "key 'loss_scale' = 0: expected a finite number > 0"},
      {R"({"step": 5, "images_seen": 1, "epoch": 0, "samples_in_epoch": 0, "loss_scale": null, "loss_scale_clean_steps": 0, "world_size": 1})",
       "key 'loss_scale' = null: expected a finite number > 0"},
      {R"({"step": 5, "images_seen": 1, "epoch": 0, "samples_in_epoch": 0, "loss_scale": 1, "loss_scale_clean_steps": 0, "world_size": 0})",
       "key 'world_size' = 0: expected an integer >= 1"},
      {R"({"step": 5, "images_seen": 1, "samples_in_epoch": 0, "loss_scale": 1, "loss_scale_clean_steps": 0, "world_size": 1})",
       "key 'epoch' is missing"},
      {"[5]", "not a JSON object"},
  };
  for (const auto& [json, expected] : cases) {
    const auto error = error_for(json);
    EXPECT_NE(error.find((dir / "state.json").string()), std::string::npos) << error;
    EXPECT_NE(error.find(expected), std::string::npos) << error;
  }
  fs::remove_all(run);
}

TEST(Checkpoint, ResumeFallsBackMovesDamageAsideAndPruningNeverTouchesIt) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto run = fresh_test_dir();
  const fs::path root = checkpoints_dir(run.string());
  Tiny t;
  save_steps(*comm, run, t, {3, 5}, 3);
  {
    Tiny fresh;
    EXPECT_FALSE(resume_from_newest_checkpoint(*comm, (run / "elsewhere").string(), fresh.contents()).has_value());
  }
  flip_byte(root / checkpoint_name(5) / "model.pt", 200);
  Tiny into;
  auto resumed = resume_from_newest_checkpoint(*comm, run.string(), into.contents());
  ASSERT_TRUE(resumed.has_value());
  EXPECT_EQ(resumed->dir, (root / checkpoint_name(3)).string());
  EXPECT_EQ(resumed->state.step, 3);
  EXPECT_EQ(resumed->state.images_seen, 30);
  EXPECT_TRUE(torch::equal(into.model->weight, t.model->weight));
  EXPECT_TRUE(fs::exists(root / "corrupt-step-000000005" / "model.pt"));
  EXPECT_FALSE(fs::exists(root / checkpoint_name(5)));

  // The same step damaged again gets a unique name; keep=1 prunes only complete checkpoints.
  save_steps(*comm, run, t, {5}, 3);
  fs::remove(root / checkpoint_name(5) / "manifest.json");
  resumed = resume_from_newest_checkpoint(*comm, run.string(), into.contents());
  EXPECT_EQ(resumed->state.step, 3);
  EXPECT_TRUE(fs::exists(root / "corrupt-step-000000005.1"));
  fs::create_directories(root / checkpoint_name(6));  // no manifest: never completed, never deleted
  save_steps(*comm, run, t, {7, 8}, 1);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"corrupt-step-000000005", "corrupt-step-000000005.1", checkpoint_name(6),
                                             checkpoint_name(8)}));
  // Nothing verifies: an error listing each, nothing moved.
  flip_byte(root / checkpoint_name(8) / "ema.pt", 50);
  const auto error = error_of([&] { resume_from_newest_checkpoint(*comm, run.string(), into.contents()); });
  EXPECT_NE(error.find(checkpoint_name(8) + ": ema.pt: checksum mismatch"), std::string::npos) << error;
  EXPECT_NE(error.find(checkpoint_name(6) + ": manifest.json: missing"), std::string::npos) << error;
  EXPECT_TRUE(fs::exists(root / checkpoint_name(8)));
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

TEST(SampleDraws, OffsetNoiseAndLognormalTimestepsKeepTheOtherDrawsAndRankIndependence) {
  const std::vector<int64_t> shape = {3, 4, 4};
  const auto plain = draw_samples(11, 3, 16, 1, 8, 1000, shape, 0.5);
  const auto offset = draw_samples(11, 3, 16, 1, 8, 1000, shape, 0.5, {}, 0.1);
  // Same timesteps, drops and flips; the noise differs by one constant per image and channel.
  EXPECT_TRUE(torch::equal(plain.timesteps, offset.timesteps));
  EXPECT_TRUE(torch::equal(plain.drop, offset.drop));
  EXPECT_TRUE(torch::equal(plain.flip, offset.flip));
  const auto shift = offset.noise - plain.noise;  // (B, C, H, W)
  EXPECT_GT(shift.abs().max().item<double>(), 0);
  EXPECT_LT((shift - shift.mean({2, 3}, true)).abs().max().item<double>(), 1e-6);
  const auto many = draw_samples(1, 0, 0, 1, 4000, 1000, {1, 2, 2}, 0.1, {}, 0.1);
  const auto many_plain = draw_samples(1, 0, 0, 1, 4000, 1000, {1, 2, 2}, 0.1);
  EXPECT_NEAR((many.noise - many_plain.noise).mean({1, 2, 3}).std().item<double>(), 0.1, 0.005);
  // A timestep function of one normal draw replaces the uniform one, the same on any rank split.
  auto of_normal = [](double z) { return static_cast<int64_t>(std::clamp(500.0 + 100.0 * z, 0.0, 999.0)); };
  const auto one = draw_samples(11, 3, 16, 1, 8, 1000, shape, 0.5, of_normal, 0.1);
  const auto rank1 = draw_samples(11, 3, 17, 2, 4, 1000, shape, 0.5, of_normal, 0.1);
  for (int64_t j = 0; j < 4; ++j) {
    EXPECT_TRUE(torch::equal(one.noise[2 * j + 1], rank1.noise[j]));
    EXPECT_EQ(one.timesteps[2 * j + 1].item<int64_t>(), rank1.timesteps[j].item<int64_t>());
  }
  const auto normal_t = draw_samples(1, 0, 0, 1, 4000, 1000, {1}, 0.1, of_normal).timesteps.to(torch::kFloat64);
  EXPECT_NEAR(normal_t.mean().item<double>(), 500, 6);
  EXPECT_NEAR(normal_t.std().item<double>(), 100, 6);
}
