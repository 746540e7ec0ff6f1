// Colour match: does a generated image show its prompt's colour? A cheap,
// model-free check for text conditioning on the built-in synthetic dataset
// (data/palette.h): "a red circle" should contain a red-ish foreground.
#pragma once

#include "eval/image_io.h"

#include <cstdint>
#include <optional>
#include <string>

namespace difftrain::eval {

// The palette colour nearest to the per-channel median of the foreground
// (pixels far from the dataset background), or "none" when almost everything
// is background. The median, unlike the mean, ignores stray noisy pixels and
// anti-aliased edges.
std::string classify_colour(const Image& image);

// The first palette colour word in the prompt, or "" if it names none.
std::string prompt_colour(const std::string& prompt);

struct ColourMatchResult {
  int64_t total = 0;    // entries whose prompt names a palette colour
  int64_t matched = 0;  // of those, images classified as that colour
  double fraction = 0;  // matched / total
};

// Reads the manifest (eval/manifest.h), loads each image it lists and compares
// classify_colour with prompt_colour. With guidance_filter, only entries with
// that guidance scale count. Entries whose prompt names no colour are skipped.
// Throws std::runtime_error naming the manifest when it lists no images, no image
// at the filter's scale (naming the scales it has), no prompt naming a colour, or
// a file that does not exist: a result is never 0/0.
ColourMatchResult colour_match(const std::string& manifest_path, std::optional<double> guidance_filter);

}  // namespace difftrain::eval
