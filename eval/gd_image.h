// Internal to eval/: conversion between Image and libgd images, and an owning
// handle so every gdImage is destroyed on every path, exceptions included.
#pragma once

#include "eval/image_io.h"

#include <gd.h>

#include <array>
#include <memory>

namespace difftrain::eval {

struct GdImageDeleter {
  void operator()(gdImagePtr image) const { gdImageDestroy(image); }
};
using GdImage = std::unique_ptr<gdImage, GdImageDeleter>;

using Rgb = std::array<uint8_t, 3>;

// A true-colour canvas filled with `fill`. Throws std::runtime_error if gd cannot allocate it.
GdImage make_canvas(int width, int height, Rgb fill);

// Copies `image` onto `canvas` with its top-left corner at (x, y).
void blit(const Image& image, gdImagePtr canvas, int x, int y);

Image to_image(gdImagePtr canvas);

inline int gd_colour(Rgb c) { return gdTrueColor(c[0], c[1], c[2]); }

}  // namespace difftrain::eval
