// PNG files, upscaling, label wrapping, grid geometry and manifests.
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
#include "eval/text_wrap.h"

#include <gtest/gtest.h>

#include "tests/test_dirs.h"
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace de = difftrain::eval;
namespace fs = std::filesystem;

namespace {


// Every pixel distinct, so a transposed or shifted copy is caught.
de::Image gradient(int64_t height, int64_t width, uint8_t salt = 0) {
  de::Image image{height, width, {}};
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      image.rgb.push_back(static_cast<uint8_t>(y * 16 + salt));
      image.rgb.push_back(static_cast<uint8_t>(x * 16));
      image.rgb.push_back(static_cast<uint8_t>(255 - y * 8 - x));
    }
  }
  return image;
}

std::array<uint8_t, 3> pixel(const de::Image& image, int64_t y, int64_t x) {
  const uint8_t* p = image.rgb.data() + (y * image.width + x) * 3;
  return {p[0], p[1], p[2]};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

TEST(ImageIo, PngRoundTrip) {
  const fs::path dir = fresh_test_dir();
  const de::Image image = gradient(5, 7);
  de::write_png((dir / "a.png").string(), image);
  const de::Image back = de::read_png((dir / "a.png").string());
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.rgb, image.rgb);
  EXPECT_FALSE(fs::exists(dir / "a.png.tmp"));
}

TEST(ImageIo, WriteIntoMissingDirectoryNamesPath) {
  const std::string path = (fresh_test_dir() / "no_such_dir" / "a.png").string();
  const std::string what = error_of([&] { de::write_png(path, gradient(2, 2)); });
  EXPECT_NE(what.find(path), std::string::npos) << what;
}

TEST(ImageIo, ReadErrorsNamePath) {
  const fs::path dir = fresh_test_dir();
  const std::string missing = (dir / "missing.png").string();
  EXPECT_NE(error_of([&] { de::read_png(missing); }).find(missing), std::string::npos);
  const std::string junk = (dir / "junk.png").string();
  std::ofstream(junk) << "not a png";
  EXPECT_NE(error_of([&] { de::read_png(junk); }).find(junk), std::string::npos);
}

TEST(ImageIo, RejectsInconsistentImage) {
  de::Image bad{2, 2, std::vector<uint8_t>(11)};
  EXPECT_THROW(de::check_image(bad), std::invalid_argument);
  EXPECT_THROW(de::write_png((fresh_test_dir() / "bad.png").string(), bad), std::invalid_argument);
}

TEST(ImageIo, UpscaleNearest) {
  const de::Image image = gradient(2, 3);
  const de::Image big = de::upscale_nearest(image, 4);
  EXPECT_EQ(big.height, 8);
  EXPECT_EQ(big.width, 12);
  for (int64_t y = 0; y < big.height; ++y)
    for (int64_t x = 0; x < big.width; ++x) EXPECT_EQ(pixel(big, y, x), pixel(image, y / 4, x / 4));
  EXPECT_EQ(de::upscale_nearest(image, 1).rgb, image.rgb);
  EXPECT_THROW(de::upscale_nearest(image, 0), std::invalid_argument);
}

TEST(TextWrap, WrapsSplitsAndTruncates) {
  using Lines = std::vector<std::string>;
  EXPECT_EQ(de::wrap_text("a red circle", 20, 3), (Lines{"a red circle"}));
  EXPECT_EQ(de::wrap_text("a red circle", 6, 3), (Lines{"a red", "circle"}));
  EXPECT_EQ(de::wrap_text("a  red\tcircle", 12, 3), (Lines{"a red circle"}));
  EXPECT_EQ(de::wrap_text("rectangle", 4, 3), (Lines{"rect", "angl", "e"}));
  EXPECT_EQ(de::wrap_text("one two three four", 5, 2), (Lines{"one", "tw..."}));
  EXPECT_EQ(de::wrap_text("", 5, 2), (Lines{""}));
  EXPECT_EQ(de::wrap_text("abcdef", 2, 1), (Lines{".."}));
}

TEST(Grid, LabelledGridGeometry) {
  const int gap = 2;  // documented gutter between cells
  std::vector<de::Image> images;
  for (int i = 0; i < 5; ++i) images.push_back(gradient(6, 8, static_cast<uint8_t>(i)));
  const std::vector<std::string> short_labels(5, "red");  // one line in a 32 px cell

  const de::Image grid = de::make_labelled_grid(images, short_labels, 3, 4);
  EXPECT_EQ(grid.width, 3 * 8 * 4 + 4 * gap);
  const int64_t row_h = (grid.height - 3 * gap) / 2;  // 2 rows of image + label strip
  EXPECT_EQ(grid.height, 2 * row_h + 3 * gap);
  EXPECT_GT(row_h, 6 * 4);

  // Cell 4 (row 1, column 1) holds image 4 at 4x.
  const int64_t x0 = gap + (8 * 4 + gap), y0 = gap + (row_h + gap);
  EXPECT_EQ(pixel(grid, y0, x0), pixel(images[4], 0, 0));
  EXPECT_EQ(pixel(grid, y0 + 6 * 4 - 1, x0 + 8 * 4 - 1), pixel(images[4], 5, 7));

  // Longer labels wrap: taller strips, same width.
  std::vector<std::string> long_labels = short_labels;
  long_labels[2] = "a very long prompt that needs to wrap onto more lines than one";
  const de::Image tall = de::make_labelled_grid(images, long_labels, 3, 4);
  EXPECT_EQ(tall.width, grid.width);
  EXPECT_GT(tall.height, grid.height);

  // More columns than images: the grid shrinks to one row.
  EXPECT_EQ(de::make_labelled_grid(images, short_labels, 10, 1).width, 5 * 8 + 6 * gap);
}

TEST(Grid, LabelledGridRejectsBadInput) {
  const std::vector<de::Image> images = {gradient(4, 4), gradient(4, 5)};
  EXPECT_THROW(de::make_labelled_grid(images, {"a", "b"}, 2, 1), std::invalid_argument);
  EXPECT_THROW(de::make_labelled_grid({gradient(4, 4)}, {"a", "b"}, 2, 1), std::invalid_argument);
  EXPECT_THROW(de::make_labelled_grid({}, {}, 2, 1), std::invalid_argument);
  EXPECT_THROW(de::make_labelled_grid({gradient(4, 4)}, {"a"}, 0, 1), std::invalid_argument);
}

TEST(Grid, ComparisonGridGeometry) {
  const int gap = 2;
  std::vector<std::vector<de::Image>> columns(3);
  for (int c = 0; c < 3; ++c)
    for (int r = 0; r < 2; ++r) columns[c].push_back(gradient(6, 8, static_cast<uint8_t>(10 * c + r)));
  const de::Image grid =
      de::make_comparison_grid(columns, {"euler", "heun", "dpm++ 2m"}, {"a red circle", "a blue square"}, 3);

  const int64_t left_w = grid.width - (3 * 8 * 3 + 4 * gap);
  const int64_t top_h = grid.height - (2 * 6 * 3 + 3 * gap);
  EXPECT_GT(left_w, 0);
  EXPECT_GT(top_h, 0);
  // Bottom-right cell is the last column's last row; its corner pixels are the image's.
  EXPECT_EQ(pixel(grid, grid.height - 1 - gap, grid.width - 1 - gap), pixel(columns[2][1], 5, 7));
  EXPECT_EQ(pixel(grid, top_h + gap, left_w + gap), pixel(columns[0][0], 0, 0));

  // Row labels widen the label column only up to a cap; beyond it they wrap.
  const de::Image wide = de::make_comparison_grid(
      columns, {"euler", "heun", "dpm++ 2m"},
      {"a red circle", "an extremely long prompt that would otherwise make the label column huge"}, 3);
  EXPECT_LT(wide.width - grid.width, 100);

  EXPECT_THROW(de::make_comparison_grid(columns, {"euler"}, {"a", "b"}, 3), std::invalid_argument);
  EXPECT_THROW(de::make_comparison_grid(columns, {"a", "b", "c"}, {"only one row"}, 3), std::invalid_argument);
}

TEST(Manifest, RoundTripWithExactKeys) {
  const fs::path path = fresh_test_dir() / "manifest.jsonl";
  const std::vector<de::ManifestEntry> entries = {
      {"images/00000.png", "a red circle", 7, "euler", 50, 3.0},
      {"images/00001.png", "a \"quoted\" \\ prompt", std::numeric_limits<uint64_t>::max(), "heun", 18, 7.25},
  };
  de::write_manifest(path.string(), entries);
  const std::string text = read_text(path);
  EXPECT_EQ(text.substr(0, text.find('\n')),
            R"({"file":"images/00000.png","prompt":"a red circle","seed":7,"sampler":"euler","steps":50,"guidance":3.0})");

  const auto back = de::read_manifest(path.string());
  ASSERT_EQ(back.size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(back[i].file, entries[i].file);
    EXPECT_EQ(back[i].prompt, entries[i].prompt);
    EXPECT_EQ(back[i].seed, entries[i].seed);
    EXPECT_EQ(back[i].sampler, entries[i].sampler);
    EXPECT_EQ(back[i].steps, entries[i].steps);
    EXPECT_EQ(back[i].guidance, entries[i].guidance);
  }
}

TEST(Manifest, ErrorsNameFileAndLine) {
  const fs::path dir = fresh_test_dir();
  const std::string good =
      R"({"file":"a.png","prompt":"a red circle","seed":1,"sampler":"euler","steps":10,"guidance":1.0})";
  const auto error_for = [&](const std::string& bad_line) {
    const std::string path = (dir / "m.jsonl").string();
    std::ofstream(path) << good << "\n\n" << bad_line << "\n";
    return error_of([&] { de::read_manifest(path); });
  };
  const std::string path = (dir / "m.jsonl").string();

  const std::string malformed = error_for(R"({"file":"b.png", "prompt": )");
  EXPECT_NE(malformed.find(path), std::string::npos) << malformed;
  EXPECT_NE(malformed.find("line 3"), std::string::npos) << malformed;

  const std::string missing = error_for(R"({"file":"b.png","prompt":"x","sampler":"euler","steps":10,"guidance":1})");
  EXPECT_NE(missing.find("line 3"), std::string::npos) << missing;
  EXPECT_NE(missing.find("\"seed\""), std::string::npos) << missing;

  const std::string wrong_type =
      error_for(R"({"file":"b.png","prompt":"x","seed":-1,"sampler":"euler","steps":10,"guidance":1})");
  EXPECT_NE(wrong_type.find("\"seed\""), std::string::npos) << wrong_type;

  EXPECT_NE(error_for("[1, 2]").find("object"), std::string::npos);
  EXPECT_NE(error_of([&] { de::read_manifest((dir / "none.jsonl").string()); }).find("none.jsonl"),
            std::string::npos);
}
