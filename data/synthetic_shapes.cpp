#include "data/synthetic_shapes.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <set>
#include <stdexcept>

#include "data/palette.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"

namespace difftrain::data {
namespace fs = std::filesystem;
namespace {

// Shape diameter as a fraction of the image side.
constexpr double kMinDiameter = 0.3;
constexpr double kMaxDiameter = 0.7;
constexpr const char* kSpecAttribute = "synthetic_spec";
// Smallest side at which the smallest shape still covers several pixels.
constexpr int64_t kMinImageSize = 8;

const std::array<uint8_t, 3>& colour_rgb(const std::string& colour) {
  for (const NamedColour& named : palette()) {
    if (colour == named.name) return named.rgb;
  }
  throw std::invalid_argument("render_shape: unknown colour '" + colour + "'");
}

enum class Shape { kCircle, kSquare, kTriangle };

Shape parse_shape(const std::string& shape) {
  if (shape == "circle") return Shape::kCircle;
  if (shape == "square") return Shape::kSquare;
  if (shape == "triangle") return Shape::kTriangle;
  throw std::invalid_argument("render_shape: unknown shape '" + shape + "'");
}

// Signed area test: which side of the edge a -> b the point p lies on.
double edge(double ax, double ay, double bx, double by, double px, double py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

// Uniform in [0, 1) from the top 53 bits; std::uniform_real_distribution is
// implementation-defined and would make the dataset depend on the library.
double unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

std::string spec_string(const SyntheticSpec& spec) {
  return "synthetic-shapes count=" + std::to_string(spec.count) +
         " image_size=" + std::to_string(spec.image_size) +
         " shard_size=" + std::to_string(spec.shard_size) + " seed=" + std::to_string(spec.seed);
}

std::string shard_name(int64_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "shard-%05lld%s", static_cast<long long>(index),
                kShardExtension);
  return name;
}

void write_shard(const std::string& path, const SyntheticSpec& spec, int64_t first, int64_t end) {
  const ImageGeometry geometry{spec.image_size, spec.image_size, 3};
  ShardWriter writer(path, geometry);
  writer.set_attribute(kSpecAttribute, spec_string(spec));
  std::vector<uint8_t> image(static_cast<size_t>(geometry.bytes()));  // (S, S, 3)
  for (int64_t i = first; i < end; ++i) {
    const SyntheticSample s = synthetic_sample(spec, i);
    render_shape(s.colour, s.shape, s.cx, s.cy, s.radius, spec.image_size, image.data());
    writer.add(image.data(), caption_for(s.colour, s.shape));
  }
  writer.close();
}

// An existing shard is reused only if it is exactly the one we would write.
void check_existing(const std::string& path, const SyntheticSpec& spec, int64_t expected_count) {
  const ImageGeometry geometry{spec.image_size, spec.image_size, 3};
  const ShardInfo info = validate_shard(path, geometry);
  const auto recorded = read_shard_attribute(path, kSpecAttribute);
  if (!recorded || *recorded != spec_string(spec) || info.count != expected_count) {
    throw ShardError("shard " + path + ": exists but was not written by this synthetic spec (" +
                     spec_string(spec) + "; found " +
                     (recorded ? "\"" + *recorded + "\"" : std::string("no synthetic_spec")) +
                     "); the built-in data is never written over other shards: set data.dir to another directory "
                     "for it, or data.synthetic=false to train on the shards there");
  }
}

}  // namespace

void render_shape(const std::string& colour, const std::string& shape, double cx, double cy,
                  double radius, int64_t image_size, uint8_t* image_hwc_out) {
  const std::array<uint8_t, 3>& rgb = colour_rgb(colour);
  const double r = radius;
  const double half_base = r * std::sqrt(3.0) / 2;
  // Triangle corners, clockwise on screen (y grows downwards): apex, bottom right, bottom left.
  const double ax = cx, ay = cy - r;
  const double bx = cx + half_base, by = cy + r / 2;
  const double qx = cx - half_base, qy = cy + r / 2;

  const Shape kind = parse_shape(shape);
  for (int64_t y = 0; y < image_size; ++y) {
    for (int64_t x = 0; x < image_size; ++x) {
      const double px = static_cast<double>(x) + 0.5, py = static_cast<double>(y) + 0.5;
      bool inside = false;
      if (kind == Shape::kCircle) {
        inside = (px - cx) * (px - cx) + (py - cy) * (py - cy) <= r * r;
      } else if (kind == Shape::kSquare) {
        inside = std::abs(px - cx) <= r && std::abs(py - cy) <= r;
      } else {
        inside = edge(ax, ay, bx, by, px, py) >= 0 && edge(bx, by, qx, qy, px, py) >= 0 &&
                 edge(qx, qy, ax, ay, px, py) >= 0;
      }
      const std::array<uint8_t, 3>& out = inside ? rgb : kBackgroundRgb;
      std::copy(out.begin(), out.end(), image_hwc_out + (y * image_size + x) * 3);
    }
  }
}

SyntheticSample synthetic_sample(const SyntheticSpec& spec, int64_t index) {
  const std::vector<NamedColour>& colours = palette();
  const std::vector<std::string>& shapes = shape_names();
  const auto combinations = static_cast<int64_t>(colours.size() * shapes.size());
  const int64_t combination = index % combinations;

  const auto i = static_cast<uint64_t>(index);
  std::seed_seq seq{static_cast<uint32_t>(spec.seed), static_cast<uint32_t>(spec.seed >> 32),
                    static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32)};
  std::mt19937_64 rng(seq);
  const auto side = static_cast<double>(spec.image_size);
  SyntheticSample sample;
  sample.colour = colours[static_cast<size_t>(combination) % colours.size()].name;
  sample.shape = shapes[static_cast<size_t>(combination) / colours.size()];
  sample.radius = side * (kMinDiameter + (kMaxDiameter - kMinDiameter) * unit(rng)) / 2;
  sample.cx = sample.radius + (side - 2 * sample.radius) * unit(rng);
  sample.cy = sample.radius + (side - 2 * sample.radius) * unit(rng);
  return sample;
}

std::vector<std::string> write_synthetic_shards(const std::string& dir, const SyntheticSpec& spec) {
  if (spec.count < 1 || spec.shard_size < 1 || spec.image_size < kMinImageSize) {
    throw std::invalid_argument(
        "write_synthetic_shards: need count >= 1, shard_size >= 1 and "
        "image_size >= " +
        std::to_string(kMinImageSize) + ", got " + spec_string(spec));
  }
  const int64_t shard_count = (spec.count + spec.shard_size - 1) / spec.shard_size;
  std::vector<std::string> paths;
  std::set<std::string> expected_names;
  for (int64_t s = 0; s < shard_count; ++s) {
    paths.push_back((fs::path(dir) / shard_name(s)).string());
    expected_names.insert(shard_name(s));
  }

  try {
    fs::create_directories(dir);
    // The built-in data goes only into a directory of its own: anything else in
    // it may be a user's data (and a stray shard would join the dataset).
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      const bool ours = expected_names.count(name) > 0 ||
                        (entry.path().extension() == ".tmp" && expected_names.count(entry.path().stem().string()) > 0);
      if (!ours) {
        throw ShardError(entry.path().string() + ": not part of the built-in synthetic dataset (" + spec_string(spec) +
                         "); the built-in data is written only into an empty directory or one it wrote itself: "
                         "set data.dir to another directory, or data.synthetic=false to train on the data there");
      }
    }
    for (int64_t s = 0; s < shard_count; ++s) {
      const int64_t first = s * spec.shard_size;
      const int64_t end = std::min(spec.count, first + spec.shard_size);
      if (fs::exists(paths[static_cast<size_t>(s)])) {
        check_existing(paths[static_cast<size_t>(s)], spec, end - first);
      } else {
        write_shard(paths[static_cast<size_t>(s)], spec, first, end);
      }
    }
  } catch (const fs::filesystem_error& e) {
    throw ShardError("synthetic shard directory " + dir + ": " + e.what());
  }
  return paths;
}

}  // namespace difftrain::data
