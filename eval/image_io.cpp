#include "eval/image_io.h"

#include "eval/atomic_write.h"
#include "eval/gd_image.h"

#include <climits>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace difftrain::eval {
namespace {

struct GdFree {
  void operator()(void* p) const { gdFree(p); }
};

}  // namespace

Image image_from_hwc(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("image_from_hwc: " + std::to_string(channels) + " channels, expected 1 or 3");
  Image image{height, width, {}};
  if (channels == 3) {
    image.rgb.assign(hwc, hwc + height * width * 3);
  } else {
    image.rgb.reserve(static_cast<size_t>(height * width * 3));
    for (int64_t i = 0; i < height * width; ++i) image.rgb.insert(image.rgb.end(), 3, hwc[i]);
  }
  return image;
}

void check_image(const Image& image) {
  // gd addresses pixels with int, so larger images cannot be drawn or encoded.
  if (image.height <= 0 || image.width <= 0 || image.height > INT_MAX || image.width > INT_MAX) {
    throw std::invalid_argument("image size " + std::to_string(image.height) + "x" +
                                std::to_string(image.width) + " is not drawable");
  }
  if (image.rgb.size() != static_cast<size_t>(image.height * image.width * 3)) {
    throw std::invalid_argument("image " + std::to_string(image.height) + "x" +
                                std::to_string(image.width) + " needs " +
                                std::to_string(image.height * image.width * 3) + " bytes, has " +
                                std::to_string(image.rgb.size()));
  }
}

void write_png(const std::string& path, const Image& image) {
  check_image(image);
  GdImage canvas = make_canvas(static_cast<int>(image.width), static_cast<int>(image.height), {0, 0, 0});
  blit(image, canvas.get(), 0, 0);
  int size = 0;
  const std::unique_ptr<void, GdFree> png(gdImagePngPtr(canvas.get(), &size));
  if (!png) throw std::runtime_error("cannot encode PNG for " + path);
  write_file_atomically(path, png.get(), static_cast<size_t>(size));
}

Image read_png(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (bytes.size() > static_cast<size_t>(INT_MAX)) throw std::runtime_error(path + " is too large");
  GdImage canvas(gdImageCreateFromPngPtr(static_cast<int>(bytes.size()), bytes.data()));
  if (!canvas) throw std::runtime_error(path + " is not a readable PNG");
  return to_image(canvas.get());
}

Image upscale_nearest(const Image& image, int factor) {
  check_image(image);
  if (factor < 1) throw std::invalid_argument("upscale factor must be >= 1, got " + std::to_string(factor));
  Image out;
  out.height = image.height * factor;
  out.width = image.width * factor;
  out.rgb.resize(static_cast<size_t>(out.height * out.width * 3));
  uint8_t* p = out.rgb.data();
  for (int64_t row = 0; row < out.height; ++row) {
    const uint8_t* src_row = image.rgb.data() + (row / factor) * image.width * 3;
    for (int64_t col = 0; col < out.width; ++col) {
      const uint8_t* src = src_row + (col / factor) * 3;
      *p++ = src[0];
      *p++ = src[1];
      *p++ = src[2];
    }
  }
  return out;
}

}  // namespace difftrain::eval
