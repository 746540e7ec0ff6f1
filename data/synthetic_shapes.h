// The built-in dataset: captioned coloured shapes ("a red circle") on
// kBackgroundRgb, every palette colour x every shape (data/palette.h), so a
// model can be trained and its colour/shape fidelity checked without any
// download.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

struct SyntheticSpec {
  int64_t count = 20000;
  int64_t image_size = 32;
  int64_t shard_size = 4096;  // samples per shard; the last shard may hold fewer
  uint64_t seed = 1234;
};

// Draws one shape with hard edges (every pixel is exactly the palette colour
// or the background, which keeps the colour-match evaluation unambiguous).
// Coordinates are in pixels with pixel (x, y) covering [x, x+1) x [y, y+1); a
// pixel is inside when its centre is. circle: radius `radius`; square: axis
// aligned, half-side `radius`; triangle: equilateral, apex up, inscribed in
// the circle of `radius`. Throws std::invalid_argument for an unknown colour
// or shape. image_hwc_out: (S, S, 3).
void render_shape(const std::string& colour, const std::string& shape, double cx, double cy,
                  double radius, int64_t image_size, uint8_t* image_hwc_out);

// What sample `index` of a synthetic dataset shows. Colour and shape cycle
// through all combinations with the index; centre and size come from an RNG
// seeded by (spec.seed, index), so a sample does not depend on shard_size.
// The diameter is 30%..70% of the side and the shape lies fully inside.
struct SyntheticSample {
  std::string colour, shape;
  double cx = 0, cy = 0, radius = 0;
};
SyntheticSample synthetic_sample(const SyntheticSpec& spec, int64_t index);

// Writes dir/shard-00000.h5, ... (atomic per shard, via ShardWriter) and
// returns their paths. Shards already present are kept if they were written
// with the same spec (recorded in the root attribute "synthetic_spec"), so an
// interrupted run resumes where it stopped and a complete directory costs only
// validation; a shard from another spec, or a stray *.h5, is a ShardError.
// Call it from one process only (rank 0, then a barrier): concurrent writers
// of one directory would share temp files.
std::vector<std::string> write_synthetic_shards(const std::string& dir, const SyntheticSpec& spec);

}  // namespace difftrain::data
