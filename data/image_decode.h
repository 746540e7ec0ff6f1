// decode_image: one image file (JPEG, PNG, WebP, and whatever else libvips
// loads) to a square (N, N, C) uint8 buffer ready for a shard.
//
// Why libvips: one well-kept library that decodes JPEG, PNG (8/16-bit,
// palette, grey, RGBA) and WebP, honours EXIF orientation (vips_autorot),
// flattens alpha on a background (vips_flatten), converts 16-bit and grey
// images to 8-bit sRGB (vips_colourspace) and resizes with antialiasing
// (vips_resize), so there is no hand-written pixel code to get wrong.
//
// Threading: libvips is initialised once per process (VIPS_INIT, on first
// call) with vips_concurrency_set(1), because make-shards runs one rank per
// core; its operation cache is off, so memory stays flat over millions of
// files. decode_image may be called from one thread at a time per process
// (libvips' error buffer is process-wide).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

enum class FitGeometry {
  kCrop,  // short side to N, then the centre N x N
  kPad,   // long side to N, keeping the aspect ratio, centred on N x N of the background colour
};

// "crop" / "pad"; from_string throws std::invalid_argument naming the value.
std::string to_string(FitGeometry geometry);
FitGeometry fit_geometry_from_string(const std::string& name);

struct DecodeOptions {
  int64_t size = 0;       // N: the output is N x N
  int64_t channels = 3;   // 3: RGB; 1: grey (ITU-R BT.601 luma of the sRGB values)
  FitGeometry geometry = FitGeometry::kCrop;
  std::array<uint8_t, 3> background{255, 255, 255};  // under transparent pixels, and the padding
  int64_t min_size = 8;   // images whose short side (in pixels, as stored) is smaller are refused
};

struct DecodedImage {
  std::vector<uint8_t> pixels;  // (N, N, C) when ok()
  std::string error;            // why not, e.g. "cannot decode: ..." or "too small: 5x7 < --min-size 8"
  bool ok() const { return error.empty(); }
};

// Never throws for a bad file: a missing, unreadable, corrupt or too small file
// gives a DecodedImage with `error` set. Throws std::invalid_argument for bad
// options and std::runtime_error if libvips cannot be initialised.
//
// Steps: read the header (libvips; a decoder error or truncation is an error,
// not a half-grey image; first page only) → size checks (min_size on the short
// side; at most 2^27 pixels) → the size before crop/pad from the displayed
// (EXIF-rotated) size: short side N (crop) or long side N (pad), rounded half
// away from zero → decode (a JPEG at 1/2, 1/4 or 1/8 size by libjpeg's scaled
// DCT when at least a further 2x reduction remains) → vips_autorot (EXIF
// orientation) → 8-bit sRGB (vips_colourspace: grey → 3 bands, 16-bit → 8-bit)
// → alpha flattened on the background (vips_flatten) → shrinking: vips_resize
// with the Lanczos3 kernel, which for large reductions first box-shrinks by an
// integer factor and applies Lanczos3 to the rest, so the result is
// antialiased; enlarging: bicubic (Catmull-Rom), pixel centres aligned → centre
// crop (offsets floor((W - N) / 2), floor((H - N) / 2)) or centre pad → for
// channels 1, BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B, rounded.
DecodedImage decode_image(const std::string& path, const DecodeOptions& options);

}  // namespace difftrain::data
