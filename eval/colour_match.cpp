#include "eval/colour_match.h"

#include "data/palette.h"
#include "eval/manifest.h"

#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <vector>
#include <limits>

namespace difftrain::eval {
namespace {

// Euclidean RGB distance beyond which a pixel is not background: every
// palette colour is at least 130 away (green), while sampling noise on the
// background stays well below 60.
constexpr double kForegroundDistance = 60;
// Below this share of foreground pixels the model drew nothing recognisable.
constexpr double kMinForegroundFraction = 0.02;
// Manifest guidance values round-trip exactly through JSON; the tolerance
// only absorbs callers that computed the filter value arithmetically.
constexpr double kGuidanceTolerance = 1e-9;

double distance(const uint8_t* pixel, const std::array<uint8_t, 3>& colour) {
  double sum = 0;
  for (int c = 0; c < 3; ++c) {
    const double d = static_cast<double>(pixel[c]) - colour[c];
    sum += d * d;
  }
  return std::sqrt(sum);
}

// Median of a channel from its 256-bin histogram of `count` values.
uint8_t histogram_median(const std::array<int64_t, 256>& histogram, int64_t count) {
  int64_t seen = 0;
  for (int value = 0; value < 256; ++value) {
    seen += histogram[value];
    if (2 * seen >= count) return static_cast<uint8_t>(value);
  }
  return 255;
}

}  // namespace

std::string classify_colour(const Image& image) {
  check_image(image);
  std::array<std::array<int64_t, 256>, 3> histograms{};
  int64_t foreground = 0;
  const int64_t pixels = image.height * image.width;
  for (int64_t i = 0; i < pixels; ++i) {
    const uint8_t* p = image.rgb.data() + 3 * i;
    if (distance(p, data::kBackgroundRgb) <= kForegroundDistance) continue;
    ++foreground;
    for (int c = 0; c < 3; ++c) ++histograms[c][p[c]];
  }
  if (static_cast<double>(foreground) < kMinForegroundFraction * static_cast<double>(pixels)) return "none";

  const uint8_t median[3] = {histogram_median(histograms[0], foreground),
                             histogram_median(histograms[1], foreground),
                             histogram_median(histograms[2], foreground)};
  std::string nearest;
  double best = std::numeric_limits<double>::infinity();
  for (const data::NamedColour& colour : data::palette()) {
    const double d = distance(median, colour.rgb);
    if (d < best) {
      best = d;
      nearest = colour.name;
    }
  }
  return nearest;
}

std::string prompt_colour(const std::string& prompt) {
  std::string word;
  // The trailing space flushes the last word.
  for (const char ch : prompt + " ") {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      continue;
    }
    for (const data::NamedColour& colour : data::palette()) {
      if (word == colour.name) return word;
    }
    word.clear();
  }
  return "";
}

ColourMatchResult colour_match(const std::string& manifest_path, std::optional<double> guidance_filter) {
  const std::filesystem::path folder = std::filesystem::path(manifest_path).parent_path();
  const std::vector<ManifestEntry> entries = read_manifest(manifest_path);
  if (entries.empty()) throw std::runtime_error("manifest " + manifest_path + " lists no images");
  ColourMatchResult result;
  int64_t at_scale = 0;
  for (const ManifestEntry& entry : entries) {
    if (guidance_filter && std::abs(entry.guidance - *guidance_filter) > kGuidanceTolerance) continue;
    ++at_scale;
    const std::string expected = prompt_colour(entry.prompt);
    if (expected.empty()) continue;
    ++result.total;
    const std::string file = (folder / entry.file).string();
    if (!std::filesystem::is_regular_file(file))
      throw std::runtime_error("manifest " + manifest_path + " lists " + entry.file + ", which does not exist");
    if (classify_colour(read_png(file)) == expected) ++result.matched;
  }
  if (at_scale == 0) {
    char w[32];
    std::snprintf(w, sizeof(w), "%g", *guidance_filter);
    throw std::runtime_error("manifest " + manifest_path + " has no images at guidance " + w + " (it has guidance " +
                             guidance_values(entries) + ")");
  }
  if (result.total == 0) {
    throw std::runtime_error("manifest " + manifest_path + ": none of its " + std::to_string(at_scale) +
                             " prompts names a colour of the built-in palette (e.g. \"" + entries.front().prompt +
                             "\"), so there is nothing to match");
  }
  result.fraction = static_cast<double>(result.matched) / static_cast<double>(result.total);
  return result;
}

}  // namespace difftrain::eval
