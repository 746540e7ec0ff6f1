#include "eval/grid.h"

#include "eval/gd_image.h"
#include "eval/text_wrap.h"

#include <gdfontmb.h>
#include <gdfonts.h>

#include <algorithm>
#include <stdexcept>

namespace difftrain::eval {
namespace {

constexpr int kGap = 2;  // gutter between cells, so neighbouring samples don't blur together
constexpr int kPad = 3;  // text inset inside a strip
constexpr size_t kMaxLabelLines = 3;
constexpr size_t kMaxTitleLines = 2;
constexpr size_t kMaxRowLabelChars = 20;  // row labels are prompts; longer ones wrap
constexpr Rgb kGutter = {96, 96, 96};
constexpr Rgb kStrip = {16, 16, 16};
constexpr Rgb kText = {255, 255, 255};

void check_same_size(const Image& image, const Image& first) {
  check_image(image);
  if (image.height != first.height || image.width != first.width) {
    throw std::invalid_argument("grid images must share one size: " + std::to_string(first.height) + "x" +
                                std::to_string(first.width) + " vs " + std::to_string(image.height) + "x" +
                                std::to_string(image.width));
  }
}

void check_upscale(int upscale) {
  if (upscale < 1) throw std::invalid_argument("grid upscale must be >= 1, got " + std::to_string(upscale));
}

// How many characters of `font` fit across `pixels`, leaving the padding.
size_t chars_fitting(int pixels, gdFontPtr font) {
  return static_cast<size_t>(std::max(1, (pixels - 2 * kPad) / font->w));
}

int text_height(size_t lines, gdFontPtr font) { return static_cast<int>(lines) * font->h + 2 * kPad; }

// Draws `lines` into the box, vertically centred; clipped so a glyph wider
// than a tiny cell cannot spill into its neighbour.
void draw_text(gdImagePtr canvas, int x, int y, int w, int h, const std::vector<std::string>& lines,
               gdFontPtr font, bool centre) {
  gdImageSetClip(canvas, x, y, x + w - 1, y + h - 1);
  int line_y = y + (h - static_cast<int>(lines.size()) * font->h) / 2;
  for (std::string line : lines) {  // a copy: gdImageString takes a non-const pointer
    const int line_w = static_cast<int>(line.size()) * font->w;
    const int line_x = centre ? x + std::max(kPad, (w - line_w) / 2) : x + kPad;
    gdImageString(canvas, font, line_x, line_y, reinterpret_cast<unsigned char*>(line.data()),
                  gd_colour(kText));
    line_y += font->h;
  }
  gdImageSetClip(canvas, 0, 0, gdImageSX(canvas) - 1, gdImageSY(canvas) - 1);
}

void fill(gdImagePtr canvas, int x, int y, int w, int h, Rgb colour) {
  gdImageFilledRectangle(canvas, x, y, x + w - 1, y + h - 1, gd_colour(colour));
}

}  // namespace

Image make_labelled_grid(const std::vector<Image>& images, const std::vector<std::string>& labels,
                         int columns, int upscale) {
  if (images.empty()) throw std::invalid_argument("make_labelled_grid: no images");
  if (labels.size() != images.size()) {
    throw std::invalid_argument("make_labelled_grid: " + std::to_string(images.size()) + " images but " +
                                std::to_string(labels.size()) + " labels");
  }
  if (columns < 1) throw std::invalid_argument("make_labelled_grid: columns must be >= 1");
  check_upscale(upscale);
  for (const Image& image : images) check_same_size(image, images.front());

  gdFontPtr font = gdFontGetSmall();
  const int cell_w = static_cast<int>(images.front().width) * upscale;
  const int image_h = static_cast<int>(images.front().height) * upscale;
  std::vector<std::vector<std::string>> wrapped;
  size_t strip_lines = 1;
  for (const std::string& label : labels) {
    wrapped.push_back(wrap_text(label, chars_fitting(cell_w, font), kMaxLabelLines));
    strip_lines = std::max(strip_lines, wrapped.back().size());
  }
  const int strip_h = text_height(strip_lines, font);

  const int n = static_cast<int>(images.size());
  const int cols = std::min(columns, n);
  const int rows = (n + cols - 1) / cols;
  GdImage canvas = make_canvas(cols * cell_w + (cols + 1) * kGap,
                               rows * (image_h + strip_h) + (rows + 1) * kGap, kGutter);
  for (int i = 0; i < n; ++i) {
    const int x = kGap + (i % cols) * (cell_w + kGap);
    const int y = kGap + (i / cols) * (image_h + strip_h + kGap);
    blit(upscale_nearest(images[i], upscale), canvas.get(), x, y);
    fill(canvas.get(), x, y + image_h, cell_w, strip_h, kStrip);
    draw_text(canvas.get(), x, y + image_h, cell_w, strip_h, wrapped[i], font, /*centre=*/true);
  }
  return to_image(canvas.get());
}

Image make_comparison_grid(const std::vector<std::vector<Image>>& columns,
                           const std::vector<std::string>& column_titles,
                           const std::vector<std::string>& row_labels, int upscale) {
  if (columns.empty() || row_labels.empty()) {
    throw std::invalid_argument("make_comparison_grid: needs at least one column and one row");
  }
  if (column_titles.size() != columns.size()) {
    throw std::invalid_argument("make_comparison_grid: " + std::to_string(columns.size()) + " columns but " +
                                std::to_string(column_titles.size()) + " titles");
  }
  for (size_t c = 0; c < columns.size(); ++c) {
    if (columns[c].size() != row_labels.size()) {
      throw std::invalid_argument("make_comparison_grid: column " + std::to_string(c) + " has " +
                                  std::to_string(columns[c].size()) + " images, expected " +
                                  std::to_string(row_labels.size()) + " (one per row label)");
    }
    for (const Image& image : columns[c]) check_same_size(image, columns.front().front());
  }
  check_upscale(upscale);

  gdFontPtr title_font = gdFontGetMediumBold();
  gdFontPtr row_font = gdFontGetSmall();
  const int cell_w = static_cast<int>(columns.front().front().width) * upscale;
  const int cell_h = static_cast<int>(columns.front().front().height) * upscale;

  std::vector<std::vector<std::string>> titles;
  size_t title_lines = 1;
  for (const std::string& title : column_titles) {
    titles.push_back(wrap_text(title, chars_fitting(cell_w, title_font), kMaxTitleLines));
    title_lines = std::max(title_lines, titles.back().size());
  }
  const int top_h = text_height(title_lines, title_font);

  size_t label_chars = 1;
  for (const std::string& label : row_labels) label_chars = std::max(label_chars, label.size());
  label_chars = std::min(label_chars, kMaxRowLabelChars);
  const int left_w = static_cast<int>(label_chars) * row_font->w + 2 * kPad;
  const size_t label_lines = static_cast<size_t>(std::max(1, (cell_h - 2 * kPad) / row_font->h));

  const int n_cols = static_cast<int>(columns.size());
  const int n_rows = static_cast<int>(row_labels.size());
  const int width = left_w + n_cols * cell_w + (n_cols + 1) * kGap;
  const int height = top_h + n_rows * cell_h + (n_rows + 1) * kGap;
  GdImage canvas = make_canvas(width, height, kGutter);
  fill(canvas.get(), 0, 0, width, top_h, kStrip);
  fill(canvas.get(), 0, 0, left_w, height, kStrip);

  for (int c = 0; c < n_cols; ++c) {
    const int x = left_w + kGap + c * (cell_w + kGap);
    draw_text(canvas.get(), x, 0, cell_w, top_h, titles[c], title_font, /*centre=*/true);
    for (int r = 0; r < n_rows; ++r) {
      blit(upscale_nearest(columns[c][r], upscale), canvas.get(), x, top_h + kGap + r * (cell_h + kGap));
    }
  }
  for (int r = 0; r < n_rows; ++r) {
    draw_text(canvas.get(), 0, top_h + kGap + r * (cell_h + kGap), left_w, cell_h,
              wrap_text(row_labels[r], label_chars, label_lines), row_font, /*centre=*/false);
  }
  return to_image(canvas.get());
}

}  // namespace difftrain::eval
