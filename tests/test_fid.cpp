// FID: the distance against closed forms, FeatureStats merging, stats files,
// FeatureExtractor errors, and feature statistics of shard and sample sets
// through a tiny TorchScript extractor (channel means). The comparison with
// scipy is tests/check_fid_scipy.py.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "data/shard_writer.h"
#include "eval/feature_extractor.h"
#include "eval/fid.h"
#include "eval/fid_stats_io.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
#include "tests/test_dirs.h"

namespace difftrain::eval {
namespace {

namespace fs = std::filesystem;

torch::Tensor correlated_features(int64_t n, int64_t d, double offset, uint64_t seed) {
  torch::manual_seed(seed);
  const auto mix = torch::randn({d, d}, torch::kFloat64) / std::sqrt(static_cast<double>(d));
  return torch::matmul(torch::randn({n, d}, torch::kFloat64), mix) + offset;  // (N, D)
}

GaussianStats stats_of(const torch::Tensor& features, const std::string& source = "test") {
  FeatureStats s(features.size(1));
  s.add(features);
  return gaussian_of(s, source);
}

// Runs `action`, which must throw E whose message contains every one of `parts`.
template <typename E>
void expect_error(const std::function<void()>& action, const std::vector<std::string>& parts) {
  try {
    action();
  } catch (const E& e) {
    const std::string message = e.what();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "\"" << message << "\" lacks \"" << part << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return;
  }
  ADD_FAILURE() << "nothing was thrown";
}

// Channel means: D = 3, a value we can compute by hand.
std::string write_channel_mean_extractor(const fs::path& dir) {
  torch::jit::Module m("M");
  m.define("def forward(self, x):\n    return x.mean(dim=[2,3])\n");
  const std::string path = (dir / "channel_means.pt").string();
  m.save(path);
  return path;
}

// Image `id` of a test set: (H, W, 3) bytes.
std::vector<uint8_t> test_image(int64_t id, int64_t height, int64_t width) {
  std::vector<uint8_t> image(static_cast<size_t>(height * width * 3));
  for (size_t j = 0; j < image.size(); ++j) image[j] = static_cast<uint8_t>((id * 37 + j * j * 11 + id * id) % 256);
  return image;
}

// The Gaussian of the channel means of test images first .. first + n - 1, computed directly.
GaussianStats expected_channel_mean_stats(int64_t n, int64_t height, int64_t width) {
  auto means = torch::empty({n, 3}, torch::kFloat64);  // (N, 3)
  for (int64_t i = 0; i < n; ++i) {
    const auto image = test_image(i, height, width);
    for (int64_t c = 0; c < 3; ++c) {
      double sum = 0;
      for (int64_t p = 0; p < height * width; ++p) sum += image[static_cast<size_t>(p * 3 + c)] / 255.0;
      means[i][c] = sum / static_cast<double>(height * width);
    }
  }
  const auto mean = means.mean(0);
  const auto centred = means - mean;
  return {mean, torch::matmul(centred.t(), centred) / static_cast<double>(n - 1), n, "by hand"};
}

void expect_same_gaussian(const GaussianStats& got, const GaussianStats& want, double tolerance) {
  EXPECT_EQ(got.count, want.count);
  EXPECT_TRUE(torch::allclose(got.mean, want.mean, 0, tolerance)) << got.mean << "\n" << want.mean;
  EXPECT_TRUE(torch::allclose(got.covariance, want.covariance, 0, tolerance)) << got.covariance << "\n"
                                                                               << want.covariance;
}

TEST(FrechetDistance, SetAgainstItselfIsZero) {
  const auto g = stats_of(correlated_features(300, 16, 0.7, 1));
  const double traces = 2 * g.covariance.trace().item<double>();
  EXPECT_NEAR(frechet_distance(g, g), 0.0, 1e-9 * traces);
}

// For diagonal covariances √(Σ₁Σ₂) = diag(σ₁σ₂), so FID = |Δμ|² + Σ (σ₁ − σ₂)².
// Rotating both Gaussians by the same orthogonal Q leaves that value unchanged
// but makes the covariances dense, which exercises the eigendecompositions.
TEST(FrechetDistance, ClosedFormForDiagonalAndCommonlyRotatedCovariances) {
  torch::manual_seed(2);
  const int64_t d = 50;
  const auto mu1 = torch::randn({d}, torch::kFloat64), mu2 = torch::randn({d}, torch::kFloat64);
  auto sd1 = torch::rand({d}, torch::kFloat64) * 2, sd2 = torch::rand({d}, torch::kFloat64) * 2;
  sd1[3] = 0;  // a singular covariance
  sd2[7] = 0;
  const double want = ((mu1 - mu2).pow(2).sum() + (sd1 - sd2).pow(2).sum()).item<double>();

  const GaussianStats a{mu1, torch::diag(sd1 * sd1), 10, "a"}, b{mu2, torch::diag(sd2 * sd2), 10, "b"};
  EXPECT_NEAR(frechet_distance(a, b), want, 1e-10 * want);

  const auto q = std::get<0>(torch::linalg_qr(torch::randn({d, d}, torch::kFloat64)));
  const auto rotate = [&](const GaussianStats& g) {
    return GaussianStats{torch::matmul(q, g.mean), torch::matmul(torch::matmul(q, g.covariance), q.t()), g.count,
                         g.source};
  };
  EXPECT_NEAR(frechet_distance(rotate(a), rotate(b)), want, 1e-9 * want);
  EXPECT_NEAR(frechet_distance(rotate(b), rotate(a)), want, 1e-9 * want);
}

TEST(FrechetDistance, DimensionMismatchNamesBothDimensions) {
  const auto a = stats_of(correlated_features(20, 16, 0, 3), "set16");
  const auto b = stats_of(correlated_features(20, 8, 0, 4), "set8");
  expect_error<std::invalid_argument>([&] { frechet_distance(a, b); }, {"16", "8", "set16", "set8"});
  GaussianStats broken = a;
  broken.covariance = broken.covariance.narrow(0, 0, 15);
  expect_error<std::invalid_argument>([&] { frechet_distance(broken, a); }, {"(15, 16)", "(D, D)"});
}

TEST(FeatureStats, MomentsMatchDirectComputation) {
  const auto x = correlated_features(97, 12, 3.0, 5);
  const auto g = stats_of(x.to(torch::kFloat32).to(torch::kFloat64));
  const auto x64 = x.to(torch::kFloat32).to(torch::kFloat64);
  const auto centred = x64 - x64.mean(0);
  EXPECT_TRUE(torch::allclose(g.mean, x64.mean(0), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(g.covariance, torch::matmul(centred.t(), centred) / 96.0, 0, 1e-11));
  EXPECT_TRUE(torch::equal(g.covariance, g.covariance.t()));
  EXPECT_EQ(g.count, 97);
}

TEST(FeatureStats, BuffersOfHalvesSumToTheWhole) {
  const auto x = correlated_features(200, 10, 1.5, 6);
  FeatureStats whole(10), first(10), second(10);
  whole.add(x);
  first.add(x.narrow(0, 0, 73).to(torch::kFloat32));  // any float dtype
  second.add(x.narrow(0, 73, 127));
  first.buffer() += second.buffer();  // what an all-reduce of two ranks does
  EXPECT_EQ(first.count(), 200);
  EXPECT_TRUE(torch::allclose(first.mean(), whole.mean(), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(first.covariance(), whole.covariance(), 0, 1e-6));

  FeatureStats exact(10);
  exact.add(x.narrow(0, 0, 73));
  exact.buffer() += second.buffer();
  EXPECT_TRUE(torch::allclose(exact.covariance(), whole.covariance(), 0, 1e-12));
  EXPECT_EQ(whole.buffer().numel(), 1 + 10 + 100);
  EXPECT_EQ(whole.buffer().scalar_type(), torch::kFloat64);
}

TEST(FeatureStats, RejectsBadInput) {
  FeatureStats s(4);
  expect_error<std::invalid_argument>([&] { s.add(torch::zeros({3, 5})); }, {"(3, 5)", "(N, 4)"});
  expect_error<std::invalid_argument>([&] { s.add(torch::zeros({3, 4}, torch::kInt64)); }, {"integer"});
  s.add(torch::ones({1, 4}));
  expect_error<std::runtime_error>([&] { s.covariance(); }, {"at least 2", "got 1"});
}

TEST(FidStatsFile, RoundTrip) {
  const auto dir = fresh_test_dir();
  const std::string path = (dir / "stats.h5").string();
  const auto g = stats_of(correlated_features(50, 7, 0.2, 7), "shards runs/data (50 images)");
  save_gaussian_stats(path, g);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_TRUE(is_gaussian_stats_file(path));
  const auto back = load_gaussian_stats(path);
  EXPECT_TRUE(torch::equal(back.mean, g.mean));
  EXPECT_TRUE(torch::equal(back.covariance, g.covariance));
  EXPECT_EQ(back.count, 50);
  EXPECT_EQ(back.source, "shards runs/data (50 images)");
  save_gaussian_stats(path, stats_of(correlated_features(5, 3, 0, 8)));  // overwrites
  EXPECT_EQ(load_gaussian_stats(path).mean.size(0), 3);
}

TEST(FidStatsFile, LoadErrorsNameTheFileAndTheCulprit) {
  const auto dir = fresh_test_dir();
  const std::string missing = (dir / "missing.h5").string();
  expect_error<std::runtime_error>([&] { load_gaussian_stats(missing); }, {missing, "does not exist"});
  EXPECT_FALSE(is_gaussian_stats_file(missing));

  const std::string text = (dir / "text.h5").string();
  std::ofstream(text) << "not hdf5\n";
  expect_error<std::runtime_error>([&] { load_gaussian_stats(text); }, {text, "not an HDF5 file"});
  EXPECT_FALSE(is_gaussian_stats_file(text));

  // A training shard is HDF5 with another format attribute.
  const std::string shard = (dir / "shard.h5").string();
  data::ShardWriter writer(shard, {2, 2, 3});
  writer.add(test_image(0, 2, 2).data(), "x");
  writer.close();
  expect_error<std::runtime_error>([&] { load_gaussian_stats(shard); }, {shard, "'format'", "difftrain-shard"});
  EXPECT_FALSE(is_gaussian_stats_file(shard));
}

TEST(FeatureExtractor, ErrorsNameTheFile) {
  const auto dir = fresh_test_dir();
  const std::string missing = (dir / "missing.pt").string();
  expect_error<std::runtime_error>([&] { FeatureExtractor e(missing); }, {missing, "does not exist"});

  const std::string text = (dir / "text.pt").string();
  std::ofstream(text) << "not a TorchScript archive\n";
  expect_error<std::runtime_error>([&] { FeatureExtractor e(text); }, {text, "cannot be loaded"});

  torch::jit::Module m("M");
  m.define("def forward(self, x):\n    return x.mean(dim=[3])\n");  // (B, 3, H): rank 3
  const std::string rank3 = (dir / "rank3.pt").string();
  m.save(rank3);
  FeatureExtractor e(rank3);
  expect_error<std::runtime_error>([&] { e.features(torch::rand({2, 3, 4, 4})); }, {rank3, "(2, 3, 4)", "(B, D)"});
  expect_error<std::invalid_argument>([&] { e.features(torch::rand({2, 1, 4, 4})); }, {"(2, 1, 4, 4)"});
}

TEST(FeatureExtractor, ChannelMeans) {
  const auto dir = fresh_test_dir();
  FeatureExtractor e(write_channel_mean_extractor(dir));
  EXPECT_EQ(e.dim(), 3);  // probe
  const auto images = torch::rand({5, 3, 6, 7});
  const auto f = e.features(images);
  EXPECT_EQ(f.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(f, images.mean({2, 3})));
}

TEST(UnitImages, LayoutAndScale) {
  std::vector<uint8_t> hwc(2 * 3 * 4 * 3);  // (B, H, W, 3)
  for (size_t j = 0; j < hwc.size(); ++j) hwc[j] = static_cast<uint8_t>(j * 3);
  const auto x = unit_images(hwc, 2, 3, 4);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 3, 4}));
  // pixel (b=1, h=2, w=3, c=1) is byte ((1 * 3 + 2) * 4 + 3) * 3 + 1 = 70
  EXPECT_FLOAT_EQ(x[1][1][2][3].item<float>(), 70 * 3 / 255.0f);
  EXPECT_THROW(unit_images(hwc, 2, 3, 5), std::invalid_argument);
}

TEST(GaussianStatsOf, ShardDirectory) {
  const auto dir = fresh_test_dir();
  const int64_t h = 4, w = 5;
  fs::create_directories(dir / "shards");
  int64_t id = 0;
  for (const auto& [name, count] : std::vector<std::pair<std::string, int64_t>>{{"b.h5", 4}, {"a.h5", 7}}) {
    // File order is by name: a.h5 holds images 0..6, b.h5 images 7..10.
    const int64_t first = name == "a.h5" ? 0 : 7;
    data::ShardWriter writer((dir / "shards" / name).string(), {h, w, 3});
    for (int64_t i = first; i < first + count; ++i) writer.add(test_image(i, h, w).data(), "caption");
    writer.close();
    id += count;
  }
  FeatureExtractor e(write_channel_mean_extractor(dir));
  const std::string shards = (dir / "shards").string();
  const auto all = gaussian_stats_of(shards, e, 0, 3);  // batches straddle the two shards
  expect_same_gaussian(all, expected_channel_mean_stats(id, h, w), 1e-6);
  EXPECT_NE(all.source.find(shards), std::string::npos);
  expect_same_gaussian(gaussian_stats_of(shards, e, 5, 2), expected_channel_mean_stats(5, h, w), 1e-6);

  // A saved stats file is loaded, not recomputed.
  const std::string stats = (dir / "ref.h5").string();
  save_gaussian_stats(stats, all);
  expect_same_gaussian(gaussian_stats_of(stats, e, 0, 3), all, 0);

  expect_error<std::runtime_error>([&] { gaussian_stats_of((dir / "nothing").string(), e, 0, 3); },
                                   {"nothing", "does not exist"});
  fs::create_directories(dir / "empty");
  expect_error<std::runtime_error>([&] { gaussian_stats_of((dir / "empty").string(), e, 0, 3); },
                                   {"empty", "no *.h5"});
}

TEST(GaussianStatsOf, SampleFolder) {
  const auto dir = fresh_test_dir();
  const int64_t h = 6, w = 3, n = 9;
  std::vector<ManifestEntry> entries;
  for (int64_t i = 0; i < n; ++i) {
    const std::string file = "w1-" + std::to_string(i) + ".png";
    write_png((dir / file).string(), Image{h, w, test_image(i, h, w)});
    entries.push_back({file, "a red circle", static_cast<uint64_t>(i), "ddim", 10, 1.0});
  }
  write_manifest((dir / "manifest.jsonl").string(), entries);
  FeatureExtractor e(write_channel_mean_extractor(dir));
  expect_same_gaussian(gaussian_stats_of(dir.string(), e, 0, 4), expected_channel_mean_stats(n, h, w), 1e-6);
  expect_same_gaussian(gaussian_stats_of((dir / "manifest.jsonl").string(), e, 3, 4),
                       expected_channel_mean_stats(3, h, w), 1e-6);

  fs::remove(dir / "w1-4.png");
  expect_error<std::runtime_error>([&] { gaussian_stats_of(dir.string(), e, 0, 4); }, {"w1-4.png"});
}

}  // namespace
}  // namespace difftrain::eval
