#include "data/image_decode.h"

#include <vips/vips.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>

namespace difftrain::data {
namespace {

// ITU-R BT.601 luma weights, applied to the (gamma-encoded) sRGB values, as
// PIL's convert("L") and most image libraries do.
constexpr double kLumaR = 0.299, kLumaG = 0.587, kLumaB = 0.114;
// Larger images are refused rather than decoded: a few-kB PNG can claim any size, and
// one decoded image must fit in a rank's memory next to its shard (100 MP cameras: 102M).
constexpr int64_t kMaxPixels = int64_t{1} << 27;

void ignore_log(const gchar*, GLogLevelFlags, const gchar*, gpointer) {}

void init_vips_once() {
  static std::once_flag once;
  static bool ok = false;
  static std::string error;
  std::call_once(once, [] {
    if (VIPS_INIT("difftrain") != 0) {
      error = vips_error_buffer();
      vips_error_clear();
      return;
    }
    vips_concurrency_set(1);  // one rank per core: no libvips worker threads beyond one
    vips_cache_set_max(0);    // every file is loaded once; a cache would only hold memory and fds
    // Decoder warnings (e.g. libpng's "known incorrect sRGB profile") would flood stderr;
    // real failures still come back as errors through fail_on.
    g_log_set_handler("VIPS", static_cast<GLogLevelFlags>(G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE), ignore_log,
                      nullptr);
    ok = true;
  });
  if (!ok) throw std::runtime_error("cannot initialise libvips: " + error);
}

// Owns one reference to a VipsImage.
class Image {
 public:
  Image() = default;
  explicit Image(VipsImage* image) : image_(image) {}
  ~Image() { reset(nullptr); }
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;

  VipsImage* get() const { return image_; }
  void reset(VipsImage* image) {
    if (image_) g_object_unref(image_);
    image_ = image;
  }

 private:
  VipsImage* image_ = nullptr;
};

// Owns one reference to a libvips array (a background colour, an output area).
struct AreaRef {
  explicit AreaRef(VipsArea* area) : area(area) {}
  ~AreaRef() { vips_area_unref(area); }
  AreaRef(const AreaRef&) = delete;
  AreaRef& operator=(const AreaRef&) = delete;
  VipsArea* area;
};

// Owns one reference to any other GObject (an interpolator, a matrix image).
struct ObjectRef {
  explicit ObjectRef(gpointer object) : object(object) {}
  ~ObjectRef() { g_object_unref(object); }
  ObjectRef(const ObjectRef&) = delete;
  ObjectRef& operator=(const ObjectRef&) = delete;
  gpointer object;
};

// libvips' accumulated error text on one line, and the buffer cleared.
std::string take_vips_error() {
  std::string text = vips_error_buffer();
  vips_error_clear();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::replace(text.begin(), text.end(), '\n', ';');
  return text.empty() ? "unknown libvips error" : text;
}

// The background colour as a libvips vector (for 8-bit sRGB images).
VipsArrayDouble* background_array(const std::array<uint8_t, 3>& bg) {
  return vips_array_double_newv(3, double(bg[0]), double(bg[1]), double(bg[2]));
}

struct Reject {
  std::string reason;
};

// Runs one libvips operation that produces `image`'s replacement; a failure
// becomes Reject{"cannot decode: <what>: <libvips' words>"}.
template <typename Op>
void step(Image& image, const char* what, Op op) {
  VipsImage* out = nullptr;
  if (op(image.get(), &out) != 0) {
    if (out) g_object_unref(out);
    throw Reject{std::string("cannot decode: ") + what + (*what ? ": " : "") + take_vips_error()};
  }
  image.reset(out);
}

// An image smaller than N is enlarged with vips_affine and the bicubic
// (Catmull-Rom) interpolator, pixel centres aligned: output x + 0.5 =
// scale * (input x + 0.5). Not vips_resize: for enlargement it also uses
// bicubic, but libvips 8.14 leaves the result shifted by half an output pixel.
void upscale(Image& image, int target_w, int target_h) {
  const double sx = double(target_w) / vips_image_get_width(image.get());
  const double sy = double(target_h) / vips_image_get_height(image.get());
  VipsInterpolate* bicubic = vips_interpolate_new("bicubic");
  const ObjectRef bicubic_ref(bicubic);
  VipsArrayInt* area = vips_array_int_newv(4, 0, 0, target_w, target_h);
  const AreaRef area_ref(VIPS_AREA(area));
  step(image, "enlarge", [&](VipsImage* in, VipsImage** out) {
    return vips_affine(in, out, sx, 0.0, 0.0, sy, "interpolate", bicubic, "oarea", area, "idx", 0.5, "idy", 0.5,
                       "odx", -0.5, "ody", -0.5, "extend", VIPS_EXTEND_COPY, nullptr);
  });
}

std::vector<uint8_t> decode_or_throw(const std::string& path, const DecodeOptions& o) {
  vips_error_clear();
  // fail_on ERROR: a corrupt or truncated file is refused instead of coming back half grey.
  Image image(vips_image_new_from_file(path.c_str(), "fail_on", VIPS_FAIL_ON_ERROR, nullptr));
  if (!image.get()) throw Reject{"cannot decode: " + take_vips_error()};

  const int w0 = vips_image_get_width(image.get()), h0 = vips_image_get_height(image.get());
  if (int64_t{w0} * h0 > kMaxPixels) {
    throw Reject{"too large: " + std::to_string(w0) + "x" + std::to_string(h0) + " > " + std::to_string(kMaxPixels) +
                 " pixels"};
  }
  if (std::min(w0, h0) < o.min_size) {
    throw Reject{"too small: " + std::to_string(w0) + "x" + std::to_string(h0) + " < --min-size " +
                 std::to_string(o.min_size)};
  }

  // Size before the crop or pad, from the displayed (EXIF-rotated) size: exact
  // integers, so rounding inside libvips cannot leave the short side at N - 1.
  const bool swap = vips_image_get_orientation_swap(image.get());
  const int w = swap ? h0 : w0, h = swap ? w0 : h0;
  const double n = static_cast<double>(o.size);
  const bool crop = o.geometry == FitGeometry::kCrop;
  const double scale = crop ? n / std::min(w, h) : n / std::max(w, h);
  const int tw = std::max(1, static_cast<int>(std::lround(w * scale)));
  const int th = std::max(1, static_cast<int>(std::lround(h * scale)));
  const int target_w = crop ? std::max<int>(tw, o.size) : std::min<int>(tw, o.size);
  const int target_h = crop ? std::max<int>(th, o.size) : std::min<int>(th, o.size);

  // JPEG shrink-on-load (libjpeg's scaled DCT, as vips_thumbnail and PIL's draft
  // do): decode at 1/2, 1/4 or 1/8 size when at least a 2x reduction is left for
  // vips_resize (its own gap), so large photos decode several times faster and
  // the result stays antialiased.
  const double reduction = std::min(double(w) / target_w, double(h) / target_h);
  int shrink = 1;
  while (shrink < 8 && reduction / (2 * shrink) >= 2.0) shrink *= 2;
  const char* loader = shrink > 1 ? vips_foreign_find_load(path.c_str()) : nullptr;
  if (!loader || std::string(loader) != "VipsForeignLoadJpegFile") {
    shrink = 1;
  } else {
    VipsImage* shrunk = nullptr;
    if (vips_jpegload(path.c_str(), &shrunk, "shrink", shrink, "fail_on", VIPS_FAIL_ON_ERROR, nullptr) != 0) {
      throw Reject{"cannot decode: " + take_vips_error()};
    }
    image.reset(shrunk);
  }
  vips_error_clear();

  // Decode once into memory: the steps below then read pixels from RAM instead of
  // driving the decoder region by region (measured 1.6x faster on 256x192 JPEGs).
  step(image, "", [](VipsImage* in, VipsImage** out) {
    *out = vips_image_copy_memory(in);
    return *out ? 0 : -1;
  });
  step(image, "autorot", [](VipsImage* in, VipsImage** out) { return vips_autorot(in, out, nullptr); });
  if (vips_image_get_interpretation(image.get()) != VIPS_INTERPRETATION_sRGB ||
      vips_image_get_format(image.get()) != VIPS_FORMAT_UCHAR) {
    step(image, "to sRGB", [](VipsImage* in, VipsImage** out) {
      return vips_colourspace(in, out, VIPS_INTERPRETATION_sRGB, nullptr);
    });
  }
  if (vips_image_hasalpha(image.get())) {
    VipsArrayDouble* bg = background_array(o.background);
    const AreaRef bg_ref(VIPS_AREA(bg));
    step(image, "flatten alpha", [bg](VipsImage* in, VipsImage** out) {
      return vips_flatten(in, out, "background", bg, "max_alpha", 255.0, nullptr);
    });
  }
  if (vips_image_get_format(image.get()) != VIPS_FORMAT_UCHAR) {
    step(image, "round", [](VipsImage* in, VipsImage** out) { return vips_rint(in, out, nullptr); });
    step(image, "to 8-bit", [](VipsImage* in, VipsImage** out) { return vips_cast_uchar(in, out, nullptr); });
  }
  if (vips_image_get_bands(image.get()) != 3) {
    throw Reject{"cannot decode: " + std::to_string(vips_image_get_bands(image.get())) +
                 " bands after conversion to sRGB, expected 3"};
  }

  // Rounding never makes one axis grow while the other shrinks. After a JPEG
  // shrink the image holds ceil(w / shrink) columns of which the last may be
  // partial: the scale comes from the true extent w / shrink, and the partial
  // edge is cut off after the resize, so the geometry matches a full decode.
  const int cw = vips_image_get_width(image.get()), ch = vips_image_get_height(image.get());
  if (target_w < cw || target_h < ch) {
    step(image, "resize", [&](VipsImage* in, VipsImage** out) {
      return vips_resize(in, out, target_w * double(shrink) / w, "vscale", target_h * double(shrink) / h, "kernel",
                         VIPS_KERNEL_LANCZOS3, nullptr);
    });
    const int rw = vips_image_get_width(image.get()), rh = vips_image_get_height(image.get());
    if (rw > target_w || rh > target_h) {
      step(image, "cut partial edge", [&](VipsImage* in, VipsImage** out) {
        return vips_extract_area(in, out, 0, 0, std::min(rw, target_w), std::min(rh, target_h), nullptr);
      });
    }
  } else if (target_w > cw || target_h > ch) {
    upscale(image, target_w, target_h);
  }
  const int rw = vips_image_get_width(image.get()), rh = vips_image_get_height(image.get());
  if (crop) {
    if (rw < o.size || rh < o.size) {
      throw Reject{"cannot decode: resize gave " + std::to_string(rw) + "x" + std::to_string(rh) + ", expected at least " +
                   std::to_string(o.size) + " on each side"};
    }
    if (rw != o.size || rh != o.size) {
      step(image, "crop", [&](VipsImage* in, VipsImage** out) {
        return vips_extract_area(in, out, (rw - o.size) / 2, (rh - o.size) / 2, o.size, o.size, nullptr);
      });
    }
  } else {
    if (rw > o.size || rh > o.size) {
      throw Reject{"cannot decode: resize gave " + std::to_string(rw) + "x" + std::to_string(rh) + ", expected at most " +
                   std::to_string(o.size) + " on each side"};
    }
    if (rw != o.size || rh != o.size) {
      VipsArrayDouble* bg = background_array(o.background);
      const AreaRef bg_ref(VIPS_AREA(bg));
      step(image, "pad", [&](VipsImage* in, VipsImage** out) {
        return vips_embed(in, out, (o.size - rw) / 2, (o.size - rh) / 2, o.size, o.size, "extend",
                          VIPS_EXTEND_BACKGROUND, "background", bg, nullptr);
      });
    }
  }
  if (o.channels == 1) {
    VipsImage* matrix = vips_image_new_matrixv(3, 1, kLumaR, kLumaG, kLumaB);
    const ObjectRef matrix_ref(matrix);
    step(image, "luma", [matrix](VipsImage* in, VipsImage** out) { return vips_recomb(in, out, matrix, nullptr); });
    step(image, "round", [](VipsImage* in, VipsImage** out) { return vips_rint(in, out, nullptr); });
    step(image, "to 8-bit", [](VipsImage* in, VipsImage** out) { return vips_cast_uchar(in, out, nullptr); });
  }

  // The pipeline runs (and the file is decoded) here.
  size_t bytes = 0;
  void* memory = vips_image_write_to_memory(image.get(), &bytes);
  if (!memory) throw Reject{"cannot decode: " + take_vips_error()};
  const auto* begin = static_cast<const uint8_t*>(memory);
  std::vector<uint8_t> pixels(begin, begin + bytes);
  g_free(memory);
  const size_t expected = static_cast<size_t>(o.size * o.size * o.channels);
  if (pixels.size() != expected) {
    throw Reject{"cannot decode: got " + std::to_string(pixels.size()) + " bytes, expected " + std::to_string(expected)};
  }
  return pixels;
}

}  // namespace

std::string to_string(FitGeometry geometry) { return geometry == FitGeometry::kCrop ? "crop" : "pad"; }

FitGeometry fit_geometry_from_string(const std::string& name) {
  if (name == "crop") return FitGeometry::kCrop;
  if (name == "pad") return FitGeometry::kPad;
  throw std::invalid_argument("geometry '" + name + "': expected crop or pad");
}

DecodedImage decode_image(const std::string& path, const DecodeOptions& options) {
  if (options.size < 1) throw std::invalid_argument("decode_image: size must be >= 1");
  if (options.channels != 1 && options.channels != 3) throw std::invalid_argument("decode_image: channels must be 1 or 3");
  if (options.min_size < 1) throw std::invalid_argument("decode_image: min_size must be >= 1");
  init_vips_once();
  DecodedImage result;
  try {
    result.pixels = decode_or_throw(path, options);
  } catch (const Reject& r) {
    result.error = r.reason;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc for a huge image
    result.error = std::string("cannot decode: ") + e.what();
  }
  return result;
}

}  // namespace difftrain::data
