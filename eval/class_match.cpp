#include "eval/class_match.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "eval/feature_extractor.h"
#include "eval/image_io.h"
#include "eval/manifest.h"

namespace difftrain::eval {
namespace {

// Manifest guidance values round-trip exactly through JSON; the tolerance only
// absorbs callers that computed a scale arithmetically (as eval/colour_match).
constexpr double kGuidanceTolerance = 1e-9;

bool same_scale(double a, double b) { return std::abs(a - b) <= kGuidanceTolerance; }

// Entries of one group: (file, expected class), classified in batches of one size.
void classify_group(DomainClassifier& classifier, const std::filesystem::path& folder, const std::string& manifest,
                    const std::vector<std::pair<std::string, int64_t>>& entries, int64_t batch_size,
                    ClassMatchGroup& group) {
  std::vector<uint8_t> pixels;  // (pending, H, W, 3)
  std::vector<int64_t> expected;
  int64_t height = 0, width = 0;
  const auto flush = [&] {
    if (expected.empty()) return;
    const int64_t n = static_cast<int64_t>(expected.size());
    const torch::Tensor predicted = classifier.classify(unit_images(pixels, n, height, width)).argmax(1);
    for (int64_t i = 0; i < n; ++i) {
      ClassAccuracy& c = group.per_class[static_cast<size_t>(expected[i])];
      const bool hit = predicted[i].item<int64_t>() == expected[i];
      ++c.total;
      c.correct += hit;
      ++group.total;
      group.correct += hit;
    }
    pixels.clear();
    expected.clear();
  };
  for (const auto& [file, cls] : entries) {
    const std::string path = (folder / file).string();
    if (!std::filesystem::is_regular_file(path)) {
      throw std::runtime_error("manifest " + manifest + " lists " + file + ", which does not exist");
    }
    const Image image = read_png(path);  // grey PNGs come back as RGB
    if (!expected.empty() && (image.height != height || image.width != width)) flush();
    height = image.height;
    width = image.width;
    pixels.insert(pixels.end(), image.rgb.begin(), image.rgb.end());
    expected.push_back(cls);
    if (static_cast<int64_t>(expected.size()) == batch_size) flush();
  }
  flush();
  group.accuracy = group.total > 0 ? static_cast<double>(group.correct) / static_cast<double>(group.total) : 0;
}

}  // namespace

ClassMatchResult class_match(DomainClassifier& classifier, const std::string& manifest_path,
                             const std::vector<double>& guidance, int64_t batch_size) {
  if (batch_size < 1) throw std::invalid_argument("class_match: batch size must be >= 1");
  const std::vector<ManifestEntry> entries = read_manifest(manifest_path);
  if (entries.empty()) throw std::runtime_error("manifest " + manifest_path + " lists no images");
  // Every prompt is checked before any image is read: a typo fails at once.
  std::vector<int64_t> expected;
  for (const ManifestEntry& e : entries) {
    try {
      expected.push_back(classifier.class_of_caption(e.prompt));
    } catch (const std::runtime_error& error) {
      throw std::runtime_error("manifest " + manifest_path + " (" + e.file + "): " + error.what());
    }
  }

  std::vector<double> scales = guidance;
  if (scales.empty()) {
    for (const ManifestEntry& e : entries) {
      if (std::none_of(scales.begin(), scales.end(), [&](double s) { return same_scale(s, e.guidance); })) {
        scales.push_back(e.guidance);
      }
    }
    std::sort(scales.begin(), scales.end());
  }

  ClassMatchResult result{classifier.path(), manifest_path, {}};
  const std::filesystem::path folder = std::filesystem::path(manifest_path).parent_path();
  for (double scale : scales) {
    ClassMatchGroup group;
    group.guidance = scale;
    for (const std::string& name : classifier.class_names()) group.per_class.push_back({name, 0, 0});
    std::vector<std::pair<std::string, int64_t>> members;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (same_scale(entries[i].guidance, scale)) members.emplace_back(entries[i].file, expected[i]);
    }
    if (members.empty()) {
      char w[32];
      std::snprintf(w, sizeof(w), "%g", scale);
      throw std::runtime_error("manifest " + manifest_path + " has no images at guidance " + w + " (it has guidance " +
                               guidance_values(entries) + ")");
    }
    classify_group(classifier, folder, manifest_path, members, batch_size, group);
    result.groups.push_back(std::move(group));
  }
  return result;
}

std::string class_match_json(const ClassMatchResult& result) {
  nlohmann::ordered_json groups = nlohmann::ordered_json::array();
  for (const ClassMatchGroup& g : result.groups) {
    nlohmann::ordered_json per_class = nlohmann::ordered_json::array();
    for (const ClassAccuracy& c : g.per_class) {
      if (c.total == 0) continue;
      per_class.push_back({{"class", c.name},
                           {"correct", c.correct},
                           {"total", c.total},
                           {"accuracy", static_cast<double>(c.correct) / static_cast<double>(c.total)}});
    }
    groups.push_back({{"guidance", g.guidance},
                      {"correct", g.correct},
                      {"total", g.total},
                      {"accuracy", g.total > 0 ? nlohmann::ordered_json(g.accuracy) : nlohmann::ordered_json()},
                      {"per_class", per_class}});
  }
  const nlohmann::ordered_json out = {
      {"classifier", result.classifier}, {"manifest", result.manifest}, {"groups", groups}};
  return out.dump(2) + "\n";
}

}  // namespace difftrain::eval
