// eval/domain_features (features --data) and eval/class_match: training on
// labelled shard sets (captions as classes, a grey set with a `labels`
// dataset), the exported module's contract, class match against a hand-made
// classifier with known answers, and the errors for bad inputs.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/script.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/palette.h"
#include "data/shard_format.h"
#include "data/shard_writer.h"
#include "data/synthetic_shapes.h"
#include "eval/class_match.h"
#include "eval/domain_features.h"
#include "eval/feature_extractor.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
#include "test_dirs.h"

namespace {

using namespace difftrain;
namespace fs = std::filesystem;

constexpr int64_t kSide = 16;

// Grey shapes whose class is the shape (circle, square, triangle) whatever
// their brightness (the synthetic colour's mean); two captions per class
// ("a small circle", "a big circle"), so the caption table maps 6 captions to
// 3 labels. Shards of 300.
void write_grey_shards(const fs::path& dir, int64_t count, uint64_t seed) {
  fs::create_directories(dir);
  const data::SyntheticSpec spec{count, kSide, 300, seed};
  std::vector<uint8_t> rgb(kSide * kSide * 3), grey(kSide * kSide);  // (S, S, 3), (S, S, 1)
  std::unique_ptr<data::ShardWriter> writer;
  for (int64_t i = 0; i < count; ++i) {
    if (i % spec.shard_size == 0) {
      if (writer) writer->close();
      char name[32];
      std::snprintf(name, sizeof(name), "shard-%05lld.h5", static_cast<long long>(i / spec.shard_size));
      writer = std::make_unique<data::ShardWriter>((dir / name).string(), data::ImageGeometry{kSide, kSide, 1});
      writer->set_attribute(data::kLabelNamesAttribute, R"(["circle", "square", "triangle"])");
    }
    const auto s = data::synthetic_sample(spec, i);
    data::render_shape(s.colour, s.shape, s.cx, s.cy, s.radius, kSide, rgb.data());
    for (int64_t p = 0; p < kSide * kSide; ++p) grey[p] = static_cast<uint8_t>((rgb[3 * p] + rgb[3 * p + 1] + rgb[3 * p + 2]) / 3);
    const auto& shapes = data::shape_names();
    const int64_t label = std::find(shapes.begin(), shapes.end(), s.shape) - shapes.begin();
    writer->add(grey.data(), std::string(s.radius < 0.25 * kSide ? "a small " : "a big ") + s.shape, label);
  }
  writer->close();
}

template <typename F>
std::string error_of(F&& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

int64_t total_of(const std::vector<eval::ClassAccuracy>& classes) {
  int64_t total = 0;
  for (const auto& c : classes) total += c.total;
  return total;
}

TEST(DomainFeatures, LearnsSyntheticShapesFromCaptions) {
  const fs::path dir = fresh_test_dir();
  data::write_synthetic_shards((dir / "data").string(), {1200, kSide, 500, 3});
  eval::DomainFeatureOptions o;
  o.data_dir = (dir / "data").string();
  o.steps = 300;
  o.threads = 1;
  const std::string out = (dir / "features.pt").string();
  const auto r = eval::train_domain_features(o, out);

  EXPECT_EQ(r.label_source, "captions");
  EXPECT_EQ(r.classes, 24);
  EXPECT_EQ(r.image_size, kSide);
  EXPECT_EQ(r.channels, 3);
  EXPECT_EQ(r.holdout_images, 120);  // 10 %
  EXPECT_EQ(r.train_images, 1080);
  EXPECT_EQ(total_of(r.per_class), 120);
  EXPECT_GT(r.holdout_accuracy, 0.6) << "chance is 1/24";
  EXPECT_LT(r.export_max_difference, 1e-4);
  std::printf("captions: held-out accuracy %.3f, loss %.3f, export difference %.2e\n", r.holdout_accuracy,
              r.final_loss, r.export_max_difference);

  // The FeatureExtractor contract, at the trained size and another one.
  eval::FeatureExtractor extractor(out);
  EXPECT_EQ(extractor.features(torch::rand({4, 3, kSide, kSide})).sizes(), (std::vector<int64_t>{4, 256}));
  EXPECT_EQ(extractor.features(torch::rand({2, 3, 40, 24})).sizes(), (std::vector<int64_t>{2, 256}));

  eval::DomainClassifier classifier(out);
  ASSERT_EQ(classifier.class_names().size(), 24u);
  const int64_t red_circle = classifier.class_of_caption("a red circle");
  EXPECT_EQ(classifier.class_names()[red_circle], "a red circle");
  EXPECT_EQ(classifier.caption_classes().size(), 24u);
  EXPECT_EQ(classifier.classify(torch::rand({3, 3, kSide, kSide})).sizes(), (std::vector<int64_t>{3, 24}));
  // A clean rendered red circle is classified as one.
  std::vector<uint8_t> image(kSide * kSide * 3);  // (S, S, 3)
  data::render_shape("red", "circle", 8, 8, 5, kSide, image.data());
  EXPECT_EQ(classifier.classify(eval::unit_images(image, 1, kSide, kSide)).argmax(1).item<int64_t>(), red_circle);

  const std::string missing = error_of([&] { classifier.class_of_caption("a pink circle"); });
  EXPECT_NE(missing.find("\"a pink circle\""), std::string::npos) << missing;
}

TEST(DomainFeatures, LearnsGreyLabelsWithHoldoutDirectory) {
  const fs::path dir = fresh_test_dir();
  write_grey_shards(dir / "train", 900, 1);
  write_grey_shards(dir / "test", 150, 2);
  eval::DomainFeatureOptions o;
  o.data_dir = (dir / "train").string();
  o.holdout_dir = (dir / "test").string();
  o.labels = eval::LabelSource::kColumn;
  o.steps = 400;
  o.threads = 1;
  const std::string out = (dir / "grey.pt").string();
  const auto r = eval::train_domain_features(o, out);

  EXPECT_EQ(r.label_source, "labels");
  EXPECT_EQ(r.classes, 3);
  EXPECT_EQ(r.channels, 1);
  EXPECT_EQ(r.train_images, 900);
  EXPECT_EQ(r.holdout_images, 150);
  ASSERT_EQ(r.per_class.size(), 3u);
  EXPECT_EQ(r.per_class[1].name, "square");
  EXPECT_EQ(total_of(r.per_class), 150);
  EXPECT_GT(r.holdout_accuracy, 0.8) << "chance is 1/3";
  std::printf("grey labels: held-out accuracy %.3f (circle %lld/%lld, square %lld/%lld, triangle %lld/%lld)\n",
              r.holdout_accuracy, (long long)r.per_class[0].correct, (long long)r.per_class[0].total,
              (long long)r.per_class[1].correct, (long long)r.per_class[1].total, (long long)r.per_class[2].correct,
              (long long)r.per_class[2].total);

  eval::DomainClassifier classifier(out);
  EXPECT_EQ(classifier.class_names(), (std::vector<std::string>{"circle", "square", "triangle"}));
  EXPECT_EQ(classifier.caption_classes().size(), 6u);
  EXPECT_EQ(classifier.class_of_caption("a big square"), 1);
  EXPECT_EQ(classifier.class_of_caption("a small triangle"), 2);

  // Grey reaches extractors as three equal channels; one channel works too.
  torch::jit::Module module = torch::jit::load(out);
  EXPECT_EQ(module.attr("in_channels").toInt(), 1);
  const torch::Tensor grey = torch::rand({5, 1, kSide, kSide});
  const torch::Tensor from_grey = module.forward({grey}).toTensor();
  const torch::Tensor from_rgb = module.forward({grey.expand({-1, 3, -1, -1}).contiguous()}).toTensor();
  EXPECT_LT((from_grey - from_rgb).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(from_grey.sizes(), (std::vector<int64_t>{5, 256}));
  const auto report = nlohmann::json::parse(module.attr("training_report").toStringRef());
  EXPECT_EQ(report["holdout_images"], 150);

  // FID statistics of the grey shards through the generic path.
  eval::FeatureExtractor extractor(out);
  EXPECT_EQ(eval::feature_stats_of_set((dir / "test").string(), extractor, 0, 64).count(), 150);
}

TEST(DomainFeatures, SameSeedSameNetwork) {
  const fs::path dir = fresh_test_dir();
  write_grey_shards(dir / "data", 200, 5);
  eval::DomainFeatureOptions o;
  o.data_dir = (dir / "data").string();
  o.steps = 15;
  o.batch_size = 16;
  o.threads = 1;
  eval::train_domain_features(o, (dir / "a.pt").string());
  eval::train_domain_features(o, (dir / "b.pt").string());
  o.seed = 8;
  eval::train_domain_features(o, (dir / "c.pt").string());
  const torch::Tensor x = torch::rand({4, 3, kSide, kSide});
  eval::DomainClassifier a((dir / "a.pt").string()), b((dir / "b.pt").string()), c((dir / "c.pt").string());
  EXPECT_TRUE(torch::equal(a.classify(x), b.classify(x)));
  EXPECT_FALSE(torch::equal(a.classify(x), c.classify(x)));
}

TEST(DomainFeatures, BadInputsNameTheCulprit) {
  const fs::path dir = fresh_test_dir();
  eval::DomainFeatureOptions o;
  o.steps = 1;
  const std::string out = (dir / "out.pt").string();

  o.data_dir = (dir / "nowhere").string();
  std::string e = error_of([&] { eval::train_domain_features(o, out); });
  EXPECT_NE(e.find(o.data_dir), std::string::npos) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;

  // 1001 distinct captions are descriptions, not classes.
  fs::create_directories(dir / "many");
  {
    data::ShardWriter writer((dir / "many" / "shard-00000.h5").string(), {8, 8, 3});
    const std::vector<uint8_t> image(8 * 8 * 3, 100);
    for (int i = 0; i < 1001; ++i) writer.add(image.data(), "caption " + std::to_string(i));
    writer.close();
  }
  o.data_dir = (dir / "many").string();
  e = error_of([&] { eval::train_domain_features(o, out); });
  EXPECT_NE(e.find("1001 distinct captions"), std::string::npos) << e;
  EXPECT_NE(e.find(o.data_dir), std::string::npos) << e;

  // --labels column on shards without labels.
  data::write_synthetic_shards((dir / "plain").string(), {40, 8, 40, 1});
  o.data_dir = (dir / "plain").string();
  o.labels = eval::LabelSource::kColumn;
  e = error_of([&] { eval::train_domain_features(o, out); });
  EXPECT_NE(e.find((dir / "plain" / "shard-00000.h5").string()), std::string::npos) << e;
  EXPECT_NE(e.find("'labels'"), std::string::npos) << e;

  // A label beyond label_names.
  fs::create_directories(dir / "range");
  {
    data::ShardWriter writer((dir / "range" / "shard-00000.h5").string(), {8, 8, 1});
    writer.set_attribute(data::kLabelNamesAttribute, R"(["a", "b"])");
    const std::vector<uint8_t> image(8 * 8, 100);
    for (int i = 0; i < 10; ++i) writer.add(image.data(), "x", i == 7 ? 5 : i % 2);
    writer.close();
  }
  o.data_dir = (dir / "range").string();
  o.labels = eval::LabelSource::kAuto;
  e = error_of([&] { eval::train_domain_features(o, out); });
  EXPECT_NE(e.find("label 5 of sample 7"), std::string::npos) << e;
  EXPECT_NE(e.find("shard-00000.h5"), std::string::npos) << e;

  EXPECT_FALSE(fs::exists(out));
  e = error_of([&] { eval::DomainClassifier classifier(out); });
  EXPECT_NE(e.find(out), std::string::npos) << e;
}

// ---------------------------------------------------------------------------
// class match

// A classifier whose verdict is known: the channel with the largest mean wins.
void write_channel_classifier(const std::string& path, bool with_classify = true) {
  torch::jit::Module m(c10::QualifiedName("__torch__.tests.ChannelClassifier"));
  m.register_attribute("class_names", c10::ListType::ofStrings(), c10::List<std::string>({"red", "green", "blue"}));
  c10::Dict<std::string, int64_t> table;
  table.insert("a red thing", 0);
  table.insert("a red circle", 0);
  table.insert("a green thing", 1);
  table.insert("a blue thing", 2);
  m.register_attribute("caption_classes", c10::DictType::create(c10::StringType::get(), c10::IntType::get()), table);
  m.define(std::string("def forward(self, images: Tensor) -> Tensor:\n"
                       "    return torch.mean(images, [2, 3])\n") +
           (with_classify ? "def classify(self, images: Tensor) -> Tensor:\n"
                            "    return torch.mean(images, [2, 3])\n"
                          : ""));
  m.save(path);
}

void write_solid_png(const fs::path& path, std::array<uint8_t, 3> rgb, int64_t side) {
  eval::Image image{side, side, {}};
  for (int64_t i = 0; i < side * side; ++i) image.rgb.insert(image.rgb.end(), rgb.begin(), rgb.end());
  eval::write_png(path.string(), image);
}

struct ManifestCase {
  std::string file, prompt;
  std::array<uint8_t, 3> rgb;
  int64_t side;
  double guidance;
};

fs::path write_case_manifest(const fs::path& dir, const std::vector<ManifestCase>& cases) {
  fs::create_directories(dir);
  std::vector<eval::ManifestEntry> entries;
  for (const ManifestCase& c : cases) {
    write_solid_png(dir / c.file, c.rgb, c.side);
    entries.push_back({c.file, c.prompt, 0, "ddim", 10, c.guidance});
  }
  eval::write_manifest((dir / "manifest.jsonl").string(), entries);
  return dir / "manifest.jsonl";
}

constexpr std::array<uint8_t, 3> kRed{200, 20, 20}, kGreen{20, 200, 20}, kBlue{20, 20, 200};

TEST(ClassMatch, CountsPerGuidanceAndClass) {
  const fs::path dir = fresh_test_dir();
  const std::string model = (dir / "classifier.pt").string();
  write_channel_classifier(model);
  // Guidance 1: red 2/2, green 1/1, blue 0/1. Guidance 3: red 0/1, green 1/1, blue 2/2.
  // Image sizes change mid-group, so batches are cut there.
  const fs::path manifest = write_case_manifest(dir / "samples", {
                                                                     {"0.png", "a red thing", kRed, 8, 1},
                                                                     {"1.png", "a red circle", kRed, 8, 1},
                                                                     {"2.png", "a green thing", kGreen, 12, 1},
                                                                     {"3.png", "a blue thing", kRed, 8, 1},
                                                                     {"4.png", "a red thing", kGreen, 8, 3},
                                                                     {"5.png", "a green thing", kGreen, 8, 3},
                                                                     {"6.png", "a blue thing", kBlue, 8, 3},
                                                                     {"7.png", "a blue thing", kBlue, 12, 3},
                                                                 });
  eval::DomainClassifier classifier(model);
  const auto r = eval::class_match(classifier, manifest.string(), {}, /*batch_size=*/2);
  ASSERT_EQ(r.groups.size(), 2u);
  const auto counts = [](const eval::ClassMatchGroup& g) {
    std::vector<std::pair<int64_t, int64_t>> out;
    for (const auto& c : g.per_class) out.emplace_back(c.correct, c.total);
    return out;
  };
  using Counts = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(r.groups[0].guidance, 1);
  EXPECT_EQ(r.groups[0].correct, 3);
  EXPECT_EQ(r.groups[0].total, 4);
  EXPECT_EQ(counts(r.groups[0]), (Counts{{2, 2}, {1, 1}, {0, 1}}));
  EXPECT_EQ(r.groups[1].guidance, 3);
  EXPECT_EQ(r.groups[1].correct, 3);
  EXPECT_EQ(counts(r.groups[1]), (Counts{{0, 1}, {1, 1}, {2, 2}}));

  const auto only3 = eval::class_match(classifier, manifest.string(), {3});
  ASSERT_EQ(only3.groups.size(), 1u);
  EXPECT_EQ(counts(only3.groups[0]), (Counts{{0, 1}, {1, 1}, {2, 2}}));

  const auto json = nlohmann::json::parse(eval::class_match_json(r));
  EXPECT_EQ(json["groups"][0]["correct"], 3);
  EXPECT_EQ(json["groups"][0]["per_class"].size(), 3u);
  EXPECT_EQ(json["groups"][0]["per_class"][2]["class"], "blue");
  EXPECT_EQ(json["groups"][0]["per_class"][2]["correct"], 0);
  EXPECT_DOUBLE_EQ(json["groups"][1]["accuracy"].get<double>(), 0.75);

  const std::string e = error_of([&] { eval::class_match(classifier, manifest.string(), {5}); });
  EXPECT_NE(e.find("no images at guidance 5"), std::string::npos) << e;
}

TEST(ClassMatch, BadInputsNameTheCulprit) {
  const fs::path dir = fresh_test_dir();
  const std::string model = (dir / "classifier.pt").string();
  write_channel_classifier(model);
  eval::DomainClassifier classifier(model);

  const fs::path unknown = write_case_manifest(dir / "unknown", {{"0.png", "a red thing", kRed, 8, 1},
                                                                 {"1.png", "a mauve thing", kRed, 8, 1}});
  std::string e = error_of([&] { eval::class_match(classifier, unknown.string(), {}); });
  EXPECT_NE(e.find("\"a mauve thing\""), std::string::npos) << e;
  EXPECT_NE(e.find("1.png"), std::string::npos) << e;

  const fs::path gone = write_case_manifest(dir / "gone", {{"0.png", "a red thing", kRed, 8, 1}});
  fs::remove(dir / "gone" / "0.png");
  e = error_of([&] { eval::class_match(classifier, gone.string(), {}); });
  EXPECT_NE(e.find("0.png, which does not exist"), std::string::npos) << e;

  const std::string no_classify = (dir / "forward_only.pt").string();
  write_channel_classifier(no_classify, false);
  e = error_of([&] { eval::DomainClassifier c(no_classify); });
  EXPECT_NE(e.find(no_classify), std::string::npos) << e;
  EXPECT_NE(e.find("classify"), std::string::npos) << e;
}

}  // namespace
