#include "eval/gd_image.h"

#include <stdexcept>
#include <string>

namespace difftrain::eval {

GdImage make_canvas(int width, int height, Rgb fill) {
  GdImage canvas(gdImageCreateTrueColor(width, height));
  if (!canvas) {
    throw std::runtime_error("gd cannot allocate a " + std::to_string(width) + "x" +
                             std::to_string(height) + " image");
  }
  gdImageFilledRectangle(canvas.get(), 0, 0, width - 1, height - 1, gd_colour(fill));
  return canvas;
}

void blit(const Image& image, gdImagePtr canvas, int x, int y) {
  check_image(image);
  const uint8_t* p = image.rgb.data();
  for (int64_t row = 0; row < image.height; ++row) {
    for (int64_t col = 0; col < image.width; ++col, p += 3) {
      gdImageSetPixel(canvas, x + static_cast<int>(col), y + static_cast<int>(row),
                      gdTrueColor(p[0], p[1], p[2]));
    }
  }
}

Image to_image(gdImagePtr canvas) {
  Image image;
  image.height = gdImageSY(canvas);
  image.width = gdImageSX(canvas);
  image.rgb.resize(static_cast<size_t>(image.height * image.width * 3));
  uint8_t* p = image.rgb.data();
  for (int row = 0; row < image.height; ++row) {
    for (int col = 0; col < image.width; ++col) {
      // Works for palette images too: gd resolves the index to a colour.
      const int c = gdImageGetTrueColorPixel(canvas, col, row);
      *p++ = static_cast<uint8_t>(gdTrueColorGetRed(c));
      *p++ = static_cast<uint8_t>(gdTrueColorGetGreen(c));
      *p++ = static_cast<uint8_t>(gdTrueColorGetBlue(c));
    }
  }
  return image;
}

}  // namespace difftrain::eval
