// Colour classification on hand-drawn images shaped like the synthetic
// dataset (data/palette.h), and the manifest-driven colour_match score.
#include "eval/colour_match.h"
#include "eval/image_io.h"
#include "eval/manifest.h"

#include "data/palette.h"

#include <gtest/gtest.h>

#include "tests/test_dirs.h"
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <random>

namespace de = difftrain::eval;
namespace dd = difftrain::data;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kSize = 32;

de::Image background() {
  de::Image image{kSize, kSize, {}};
  for (int64_t i = 0; i < kSize * kSize; ++i)
    image.rgb.insert(image.rgb.end(), dd::kBackgroundRgb.begin(), dd::kBackgroundRgb.end());
  return image;
}

void fill_rect(de::Image& image, int64_t y0, int64_t x0, int64_t h, int64_t w, std::array<uint8_t, 3> rgb) {
  for (int64_t y = y0; y < y0 + h; ++y)
    for (int64_t x = x0; x < x0 + w; ++x) std::copy(rgb.begin(), rgb.end(), image.rgb.begin() + (y * kSize + x) * 3);
}

de::Image shape(std::array<uint8_t, 3> rgb) {
  de::Image image = background();
  fill_rect(image, 10, 8, 12, 12, rgb);  // 144 of 1024 pixels, like a small dataset shape
  return image;
}

// What an imperfect sample looks like: every pixel jittered, plus scattered
// pixels of random colours (3% of the image).
void add_noise(de::Image& image, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> jitter(-15, 15), byte(0, 255), index(0, kSize * kSize - 1);
  for (uint8_t& v : image.rgb) v = static_cast<uint8_t>(std::clamp(v + jitter(rng), 0, 255));
  for (int i = 0; i < kSize * kSize * 3 / 100; ++i) {
    const int at = index(rng) * 3;
    for (int c = 0; c < 3; ++c) image.rgb[at + c] = static_cast<uint8_t>(byte(rng));
  }
}


}  // namespace

TEST(ColourMatch, ClassifiesEveryPaletteColour) {
  for (const auto& colour : dd::palette()) EXPECT_EQ(de::classify_colour(shape(colour.rgb)), colour.name);
}

TEST(ColourMatch, NoisyImagesKeepTheirColour) {
  uint32_t seed = 0;
  for (const auto& colour : dd::palette()) {
    de::Image image = shape(colour.rgb);
    add_noise(image, ++seed);
    EXPECT_EQ(de::classify_colour(image), colour.name);
  }
}

TEST(ColourMatch, BackgroundOnlyIsNone) {
  EXPECT_EQ(de::classify_colour(background()), "none");
  de::Image noisy = background();
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> jitter(-15, 15);
  for (uint8_t& v : noisy.rgb) v = static_cast<uint8_t>(v + jitter(rng));
  EXPECT_EQ(de::classify_colour(noisy), "none");
  // A speck below 2% of the image is not a shape.
  de::Image speck = background();
  fill_rect(speck, 0, 0, 4, 4, dd::palette().front().rgb);
  EXPECT_EQ(de::classify_colour(speck), "none");
}

TEST(ColourMatch, MedianIgnoresAMinorityColour) {
  // A red shape with a smaller blue blob: the mean would land between them, the median stays red.
  de::Image image = shape({220, 30, 30});
  fill_rect(image, 0, 0, 8, 8, {30, 60, 220});
  EXPECT_EQ(de::classify_colour(image), "red");
}

TEST(ColourMatch, PromptColour) {
  EXPECT_EQ(de::prompt_colour(dd::caption_for("red", "circle")), "red");
  EXPECT_EQ(de::prompt_colour("A Cyan square"), "cyan");
  EXPECT_EQ(de::prompt_colour("a blue, large triangle"), "blue");
  EXPECT_EQ(de::prompt_colour("a reddish circle"), "");
  EXPECT_EQ(de::prompt_colour("a circle"), "");
}

TEST(ColourMatch, ScoresAManifest) {
  const fs::path dir = fresh_test_dir();
  fs::create_directories(dir / "images");
  const auto rgb = [](const std::string& name) {
    for (const auto& c : dd::palette())
      if (name == c.name) return c.rgb;
    throw std::invalid_argument(name);
  };
  struct Sample {
    std::string prompt, drawn;
    double guidance;
  };
  const std::vector<Sample> samples = {
      {"a red circle", "blue", 1.0},    // miss
      {"a green square", "green", 1.0}, // hit
      {"a red circle", "red", 3.0},     // hit
      {"a cyan triangle", "cyan", 3.0}, // hit
      {"a circle", "white", 3.0},       // no colour in the prompt: not scored
  };
  std::vector<de::ManifestEntry> entries;
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::string file = "images/" + std::to_string(i) + ".png";
    de::write_png((dir / file).string(), shape(rgb(samples[i].drawn)));
    entries.push_back({file, samples[i].prompt, i, "euler", 20, samples[i].guidance});
  }
  const std::string manifest = (dir / "manifest.jsonl").string();
  de::write_manifest(manifest, entries);

  const auto all = de::colour_match(manifest, std::nullopt);
  EXPECT_EQ(all.total, 4);
  EXPECT_EQ(all.matched, 3);
  EXPECT_DOUBLE_EQ(all.fraction, 0.75);

  const auto guided = de::colour_match(manifest, 3.0);
  EXPECT_EQ(guided.total, 2);
  EXPECT_EQ(guided.matched, 2);

  const auto weak = de::colour_match(manifest, 1.0);
  EXPECT_EQ(weak.total, 2);
  EXPECT_DOUBLE_EQ(weak.fraction, 0.5);

  // A scale the manifest does not have is an error naming the scales it has, never 0/0 = 0.
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string no_scale = message([&] { de::colour_match(manifest, 9.0); });
  EXPECT_NE(no_scale.find("no images at guidance 9 (it has guidance 1, 3)"), std::string::npos) << no_scale;
  EXPECT_NE(no_scale.find(manifest), std::string::npos) << no_scale;

  // A listed image that is gone is named.
  fs::remove(dir / "images/2.png");
  const std::string gone = message([&] { de::colour_match(manifest, 3.0); });
  EXPECT_NE(gone.find("lists images/2.png, which does not exist"), std::string::npos) << gone;
}

TEST(ColourMatch, RefusesManifestsWithNothingToScore) {
  const fs::path dir = fresh_test_dir();
  const auto message = [](const std::string& path) {
    try {
      de::colour_match(path, std::nullopt);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string empty = (dir / "empty.jsonl").string();
  de::write_manifest(empty, {});
  EXPECT_NE(message(empty).find("manifest " + empty + " lists no images"), std::string::npos) << message(empty);
  EXPECT_NE(message((dir / "none.jsonl").string()).find("none.jsonl does not exist"), std::string::npos);
  EXPECT_NE(message(dir.string()).find("is a directory"), std::string::npos) << message(dir.string());

  de::write_png((dir / "a.png").string(), shape({255, 0, 0}));
  const std::string colourless = (dir / "colourless.jsonl").string();
  de::write_manifest(colourless, {{"a.png", "a circle", 0, "ddim", 5, 1.0}});
  EXPECT_NE(message(colourless).find("names a colour of the built-in palette"), std::string::npos)
      << message(colourless);
}
