// The synthetic shapes dataset: rendered pixels, sample parameters, and the
// shards write_synthetic_shards produces (and reuses).
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "data/palette.h"
#include "data/shard_reader.h"
#include "data/synthetic_shapes.h"
#include "tests/data_test_util.h"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using testing::expect_shard_error;
using testing::TempDir;

using Rgb = std::array<uint8_t, 3>;

Rgb rgb_of(const std::string& colour) {
  for (const NamedColour& c : palette()) {
    if (colour == c.name) return c.rgb;
  }
  ADD_FAILURE() << "no colour " << colour;
  return {};
}

Rgb pixel(const std::vector<uint8_t>& image, int64_t size, int64_t x, int64_t y) {
  const size_t at = static_cast<size_t>((y * size + x) * 3);
  return {image[at], image[at + 1], image[at + 2]};
}

// Counts shape pixels after checking that every pixel is either `colour` or
// the background; also returns the shape's bounding box.
struct Coverage {
  int64_t pixels = 0;
  int64_t min_x = 1 << 30, max_x = -1, min_y = 1 << 30, max_y = -1;
};
Coverage coverage(const std::vector<uint8_t>& image, int64_t size, const Rgb& colour) {
  Coverage c;
  for (int64_t y = 0; y < size; ++y) {
    for (int64_t x = 0; x < size; ++x) {
      const Rgb p = pixel(image, size, x, y);
      if (p == colour) {
        ++c.pixels;
        c.min_x = std::min(c.min_x, x), c.max_x = std::max(c.max_x, x);
        c.min_y = std::min(c.min_y, y), c.max_y = std::max(c.max_y, y);
      } else {
        EXPECT_EQ(p, kBackgroundRgb)
            << "pixel (" << x << ", " << y << ") is neither colour nor background";
      }
    }
  }
  return c;
}

std::vector<uint8_t> render(const std::string& colour, const std::string& shape, double cx,
                            double cy, double radius, int64_t size = 32) {
  std::vector<uint8_t> image(static_cast<size_t>(size * size * 3), 0);  // (S, S, 3)
  render_shape(colour, shape, cx, cy, radius, size, image.data());
  return image;
}

TEST(RenderShape, CircleHasPaletteColourInsideAndBackgroundOutside) {
  const auto image = render("red", "circle", 16, 16, 8);
  EXPECT_EQ(pixel(image, 32, 16, 16), rgb_of("red"));
  EXPECT_EQ(pixel(image, 32, 0, 0), kBackgroundRgb);
  EXPECT_EQ(pixel(image, 32, 16, 2), kBackgroundRgb);  // above the top of the circle
  EXPECT_EQ(pixel(image, 32, 9, 9), kBackgroundRgb);   // inside the bounding box, outside the disc
  const Coverage c = coverage(image, 32, rgb_of("red"));
  EXPECT_NEAR(static_cast<double>(c.pixels), M_PI * 64, 0.1 * M_PI * 64);
  EXPECT_EQ(c.min_x, 8);
  EXPECT_EQ(c.max_x, 23);
}

TEST(RenderShape, SquareCoversExactlyItsPixels) {
  const auto image = render("blue", "square", 10, 12, 5);
  const Coverage c = coverage(image, 32, rgb_of("blue"));
  EXPECT_EQ(c.pixels, 100);
  EXPECT_EQ(c.min_x, 5);
  EXPECT_EQ(c.max_x, 14);
  EXPECT_EQ(c.min_y, 7);
  EXPECT_EQ(c.max_y, 16);
}

TEST(RenderShape, TriangleIsApexUp) {
  const auto image = render("green", "triangle", 16, 16, 12);
  const Coverage c = coverage(image, 32, rgb_of("green"));
  ASSERT_GT(c.pixels, 0);
  auto row_width = [&](int64_t y) {
    int64_t n = 0;
    for (int64_t x = 0; x < 32; ++x) n += pixel(image, 32, x, y) == rgb_of("green");
    return n;
  };
  EXPECT_LT(row_width(c.min_y + 1), row_width(c.max_y - 1));
  EXPECT_EQ(c.min_y, 5);   // apex at cy - r = 4; row 4's centres all miss the sharp tip
  EXPECT_EQ(c.max_y, 21);  // base at cy + r / 2
  // Area of the equilateral triangle inscribed in radius 12: 3 sqrt(3) / 4 r^2.
  EXPECT_NEAR(static_cast<double>(c.pixels), 3 * std::sqrt(3.0) / 4 * 144, 15);
}

TEST(RenderShape, EveryPaletteColourAndShapeRenders) {
  for (const NamedColour& colour : palette()) {
    for (const std::string& shape : shape_names()) {
      const auto image = render(colour.name, shape, 16, 16, 8);
      EXPECT_GT(coverage(image, 32, colour.rgb).pixels, 50) << colour.name << " " << shape;
    }
  }
}

TEST(RenderShape, UnknownNamesAreRejected) {
  std::vector<uint8_t> image(32 * 32 * 3);
  EXPECT_THROW(render_shape("mauve", "circle", 16, 16, 8, 32, image.data()), std::invalid_argument);
  EXPECT_THROW(render_shape("red", "hexagon", 16, 16, 8, 32, image.data()), std::invalid_argument);
}

TEST(SyntheticSample, CoversAllCombinationsFullyInsideWithBoundedSize) {
  SyntheticSpec spec;
  spec.image_size = 32;
  std::set<std::string> captions;
  for (int64_t i = 0; i < 2000; ++i) {
    const SyntheticSample s = synthetic_sample(spec, i);
    if (i < 24) captions.insert(caption_for(s.colour, s.shape));
    EXPECT_GE(2 * s.radius, 0.3 * 32 - 1e-9);
    EXPECT_LE(2 * s.radius, 0.7 * 32 + 1e-9);
    EXPECT_GE(s.cx - s.radius, 0);
    EXPECT_LE(s.cx + s.radius, 32);
    EXPECT_GE(s.cy - s.radius, 0);
    EXPECT_LE(s.cy + s.radius, 32);
  }
  EXPECT_EQ(captions.size(), palette().size() * shape_names().size());

  const SyntheticSample a = synthetic_sample(spec, 5);
  const SyntheticSample b = synthetic_sample(spec, 5);
  EXPECT_EQ(a.cx, b.cx);
  EXPECT_EQ(a.radius, b.radius);
  spec.seed += 1;
  const SyntheticSample c = synthetic_sample(spec, 5);
  EXPECT_EQ(a.colour, c.colour);
  EXPECT_NE(a.cx, c.cx);
}

SyntheticSpec small_spec() {
  SyntheticSpec spec;
  spec.count = 100;
  spec.image_size = 16;
  spec.shard_size = 40;
  spec.seed = 3;
  return spec;
}

TEST(WriteSyntheticShards, ShardsHoldTheRenderedSamplesAndCaptions) {
  TempDir dir;
  const SyntheticSpec spec = small_spec();
  const std::vector<std::string> paths = write_synthetic_shards(dir.path(), spec);
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], dir.file("shard-00000.h5"));
  EXPECT_EQ(paths[2], dir.file("shard-00002.h5"));

  const ImageGeometry geometry{16, 16, 3};
  const std::vector<ShardInfo> shards = open_shard_directory(dir.path(), geometry);
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(shards[0].count, 40);
  EXPECT_EQ(shards[2].count, 20);

  int64_t id = 0;
  std::vector<uint8_t> image(static_cast<size_t>(geometry.bytes()));  // (H, W, C)
  std::string caption;
  for (const ShardInfo& info : shards) {
    ShardReader reader(info);
    for (int64_t i = 0; i < reader.size(); ++i, ++id) {
      reader.read(i, image.data(), &caption);
      const SyntheticSample s = synthetic_sample(spec, id);
      EXPECT_EQ(caption, caption_for(s.colour, s.shape)) << "sample " << id;
      const Coverage c = coverage(image, 16, rgb_of(s.colour));
      EXPECT_GT(c.pixels, 0) << "sample " << id;
      EXPECT_EQ(image, render(s.colour, s.shape, s.cx, s.cy, s.radius, 16)) << "sample " << id;
    }
  }
  EXPECT_EQ(id, 100);
}

TEST(WriteSyntheticShards, ReusesCompleteShardsAndRefillsMissingOnes) {
  TempDir dir;
  const SyntheticSpec spec = small_spec();
  const std::vector<std::string> paths = write_synthetic_shards(dir.path(), spec);
  const auto first_written = fs::last_write_time(paths[0]);
  fs::remove(paths[1]);

  EXPECT_EQ(write_synthetic_shards(dir.path(), spec), paths);
  EXPECT_EQ(fs::last_write_time(paths[0]), first_written) << "a complete shard is not rewritten";
  ASSERT_TRUE(fs::exists(paths[1]));
  ShardReader reader(validate_shard(paths[1], ImageGeometry{16, 16, 3}));
  std::string caption;
  reader.read(0, nullptr, &caption);
  const SyntheticSample s = synthetic_sample(spec, 40);
  EXPECT_EQ(caption, caption_for(s.colour, s.shape));
}

TEST(WriteSyntheticShards, RefusesADirectoryFromAnotherSpec) {
  TempDir dir;
  SyntheticSpec spec = small_spec();
  write_synthetic_shards(dir.path(), spec);
  spec.seed = 4;
  expect_shard_error([&] { write_synthetic_shards(dir.path(), spec); },
                     {dir.file("shard-00000.h5"), "seed=4", "seed=3"});
  spec = small_spec();
  spec.count = 60;  // two shards: shard-00002.h5 would be a stray
  expect_shard_error([&] { write_synthetic_shards(dir.path(), spec); },
                     {dir.file("shard-00002.h5"), "not part of"});
}

}  // namespace
}  // namespace difftrain::data
