// Image: the 8-bit RGB picture every evaluation output is made of, and its
// PNG files. PNG encoding goes through libgd; callers never see gd types.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::eval {

struct Image {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> rgb;  // (H, W, 3), row-major
};

// An (H, W, C) byte image with C = 3, or C = 1 (grey: each value becomes R = G = B).
Image image_from_hwc(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels);

// Throws std::invalid_argument unless rgb.size() == height * width * 3 and both are > 0.
void check_image(const Image& image);

// Written atomically (temp file + rename). Throws std::runtime_error naming
// `path` when it cannot be written, e.g. its directory does not exist.
void write_png(const std::string& path, const Image& image);

// Palette and grey PNGs are returned as RGB; alpha is dropped.
Image read_png(const std::string& path);

// Each pixel becomes a factor x factor block; factor >= 1.
Image upscale_nearest(const Image& image, int factor);

}  // namespace difftrain::eval
