#include "eval/plot.h"

#include "eval/gd_image.h"
#include "eval/text_wrap.h"

#include <gdfontg.h>
#include <gdfontmb.h>
#include <gdfonts.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace difftrain::eval {
namespace {

constexpr int kPad = 6;              // outer margin and gap between text blocks
constexpr int kRightMargin = 24;     // room for half of the last x tick label
constexpr int kTickLength = 4;
constexpr int kTickGap = 3;          // between a tick and its label
constexpr int kMarkerRadius = 4;
constexpr int kLineThickness = 2;
constexpr double kRangeMargin = 0.05;  // of the span, each side, so edge markers stay whole
constexpr int kMinLabelGapX = 10;      // pixels between neighbouring x tick labels
constexpr int kMinLabelGapY = 4;
constexpr int kLegendInset = 8;        // legend box to plot frame
constexpr int kLegendSwatch = 22;      // sample line length in the legend
constexpr int kLegendLineHeight = 15;  // >= marker diameter and font height

constexpr Rgb kBackground = {255, 255, 255};
constexpr Rgb kGrid = {225, 225, 225};
constexpr Rgb kFrame = {60, 60, 60};
constexpr Rgb kText = {20, 20, 20};
constexpr Rgb kLegendBorder = {170, 170, 170};

// Tableau 10 (matplotlib's default cycle): distinguishable, also in greyscale print order.
constexpr std::array<Rgb, 10> kPalette = {{{31, 119, 180},
                                           {255, 127, 14},
                                           {44, 160, 44},
                                           {214, 39, 40},
                                           {148, 103, 189},
                                           {140, 86, 75},
                                           {227, 119, 194},
                                           {127, 127, 127},
                                           {188, 189, 34},
                                           {23, 190, 207}}};

enum class Marker { kCircle, kSquare, kTriangleUp, kDiamond, kTriangleDown, kPlus, kCross };
constexpr int kMarkerCount = 7;  // coprime with the palette size

gdFontPtr title_font() { return gdFontGetGiant(); }
gdFontPtr label_font() { return gdFontGetMediumBold(); }
gdFontPtr tick_font() { return gdFontGetSmall(); }

double axis_coord(double v, bool log) { return log ? std::log10(v) : v; }

bool plottable(double v, bool log) { return std::isfinite(v) && (!log || v > 0); }

int text_width(const std::string& text, gdFontPtr font) { return static_cast<int>(text.size()) * font->w; }

// Truncates `text` to one line of at most `pixels` width ("..." marks a cut).
std::string fit_line(const std::string& text, int pixels, gdFontPtr font) {
  if (text.empty()) return text;
  return wrap_text(text, static_cast<size_t>(std::max(1, pixels / font->w)), 1).front();
}

void draw_string(gdImagePtr canvas, gdFontPtr font, int x, int y, std::string text, Rgb colour) {
  gdImageString(canvas, font, x, y, reinterpret_cast<unsigned char*>(text.data()), gd_colour(colour));
}

struct Tick {
  double value;
  std::string label;
};

struct Layout {
  PlotArea area;
  std::vector<Tick> x_ticks, y_ticks;
};

// Fixed-point with as many decimals as the step needs; scientific beyond that.
std::string format_linear(double v, double step) {
  if (std::fabs(v) < step * 1e-9) v = 0;  // no "-0.0" from accumulated rounding
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  char buf[64];
  if (decimals <= 6 && std::fabs(v) < 1e7) {
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  }
  return buf;
}

// m x 10^k written plainly ("0.002", "500", "20000") unless that gets long ("1e6", "5e-5").
std::string format_power(int mantissa, int exponent) {
  char buf[64];
  if (exponent >= -4 && exponent <= 5) {
    std::snprintf(buf, sizeof buf, "%g", mantissa * std::pow(10.0, exponent));
  } else {
    std::snprintf(buf, sizeof buf, "%de%d", mantissa, exponent);
  }
  return buf;
}

// Smallest of 1, 2, 5 x 10^k that is >= v (v > 0).
double nice_step_at_least(double v) {
  const double decade = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * decade >= v * (1 - 1e-9)) return m * decade;
  }
  return 10 * decade;
}

double next_nice_step(double step) {
  const double decade = std::pow(10.0, std::floor(std::log10(step) + 1e-9));
  const double m = step / decade;
  return (m < 1.5 ? 2 : m < 3.5 ? 5 : 10) * decade;
}

// One axis of the data: its range and pixel extent, for choosing ticks.
struct Axis {
  double lo, hi;  // data range (positive on a log axis)
  bool log;
  int pixels;
  bool horizontal;

  double px(double v) const {
    return (axis_coord(v, log) - axis_coord(lo, log)) / (axis_coord(hi, log) - axis_coord(lo, log)) * pixels;
  }
};

// Whether neighbouring labels keep clear of each other.
bool labels_fit(const Axis& axis, const std::vector<Tick>& ticks) {
  gdFontPtr font = tick_font();
  for (size_t i = 1; i < ticks.size(); ++i) {
    const double spacing = std::fabs(axis.px(ticks[i].value) - axis.px(ticks[i - 1].value));
    const double needed =
        axis.horizontal ? (text_width(ticks[i].label, font) + text_width(ticks[i - 1].label, font)) / 2.0 +
                              kMinLabelGapX
                        : font->h + kMinLabelGapY;
    if (spacing < needed) return false;
  }
  return true;
}

std::vector<Tick> linear_ticks(const Axis& axis) {
  double step = nice_step_at_least((axis.hi - axis.lo) / 12);
  for (;; step = next_nice_step(step)) {
    std::vector<Tick> ticks;
    for (double k = std::ceil(axis.lo / step - 1e-9); k <= std::floor(axis.hi / step + 1e-9); ++k) {
      const double v = k * step;
      if (!axis.log || v > 0) ticks.push_back({v, format_linear(v, step)});
    }
    if (ticks.size() <= 2 || labels_fit(axis, ticks)) return ticks;
  }
}

// m x 10^k for m in `mantissas` and every `decade_step`-th k, inside the range.
std::vector<Tick> power_ticks(const Axis& axis, const std::vector<int>& mantissas, int decade_step) {
  std::vector<Tick> ticks;
  const int first = static_cast<int>(std::floor(std::log10(axis.lo)));
  const int last = static_cast<int>(std::ceil(std::log10(axis.hi)));
  for (int k = first; k <= last; ++k) {
    if (k % decade_step != 0) continue;
    for (int m : mantissas) {
      const double v = m * std::pow(10.0, k);
      if (v >= axis.lo * (1 - 1e-9) && v <= axis.hi * (1 + 1e-9)) ticks.push_back({v, format_power(m, k)});
    }
  }
  return ticks;
}

std::vector<Tick> choose_ticks(const Axis& axis) {
  if (!axis.log) return linear_ticks(axis);
  std::vector<Tick> ticks = power_ticks(axis, {1, 2, 5}, 1);
  if (ticks.size() < 2) return linear_ticks(axis);  // less than about a decade: 1-2-5 would leave it bare
  if (labels_fit(axis, ticks)) return ticks;
  for (int decade_step = 1;; ++decade_step) {
    ticks = power_ticks(axis, {1}, decade_step);
    if (ticks.size() <= 2 || labels_fit(axis, ticks)) return ticks;
  }
}

// Data range of the plottable points, widened by the margin; a sensible default when there are none.
std::pair<double, double> data_range(const std::vector<PlotSeries>& series, bool x_axis, const PlotOptions& o) {
  const bool log = x_axis ? o.log_x : o.log_y;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const PlotSeries& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!plottable(s.x[i], o.log_x) || !plottable(s.y[i], o.log_y)) continue;
      const double c = axis_coord(x_axis ? s.x[i] : s.y[i], log);
      lo = std::min(lo, c);
      hi = std::max(hi, c);
    }
  }
  if (lo > hi) {  // no points: an empty frame over 1..1000 (log) or 0..1
    lo = 0;
    hi = log ? 3 : 1;
  } else if (lo == hi) {  // one value: centre it in a half-decade, or +-50% (+-1 around 0)
    const double half = log ? 0.5 : (lo == 0 ? 1 : std::fabs(lo) / 2);
    lo -= half;
    hi += half;
  } else {
    const double margin = (hi - lo) * kRangeMargin;
    lo -= margin;
    hi += margin;
  }
  return log ? std::make_pair(std::pow(10.0, lo), std::pow(10.0, hi)) : std::make_pair(lo, hi);
}

void check_arguments(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  if (options.width < kMinPlotWidth || options.height < kMinPlotHeight) {
    throw std::invalid_argument("plot_lines: size " + std::to_string(options.width) + "x" +
                                std::to_string(options.height) + " is below the minimum " +
                                std::to_string(kMinPlotWidth) + "x" + std::to_string(kMinPlotHeight));
  }
  for (size_t i = 0; i < series.size(); ++i) {
    if (series[i].x.size() != series[i].y.size()) {
      throw std::invalid_argument("plot_lines: series " + std::to_string(i) + " '" + series[i].label + "' has " +
                                  std::to_string(series[i].x.size()) + " x values but " +
                                  std::to_string(series[i].y.size()) + " y values");
    }
  }
}

// Vertical layout first (it does not depend on ticks), then the y ticks, whose
// label widths set the left margin, then the x ticks for the remaining width.
Layout make_layout(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  check_arguments(series, options);
  Layout layout;
  PlotArea& a = layout.area;
  a.log_x = options.log_x;
  a.log_y = options.log_y;
  std::tie(a.x_min, a.x_max) = data_range(series, /*x_axis=*/true, options);
  std::tie(a.y_min, a.y_max) = data_range(series, /*x_axis=*/false, options);

  a.top = options.title.empty() ? kPad + tick_font()->h / 2 : kPad + title_font()->h + kPad;
  const int bottom = kTickLength + kTickGap + tick_font()->h + kPad +
                     (options.x_label.empty() ? 0 : label_font()->h + kPad);
  a.height = options.height - a.top - bottom;
  layout.y_ticks = choose_ticks({a.y_min, a.y_max, a.log_y, a.height - 1, /*horizontal=*/false});

  int y_label_w = 0;
  for (const Tick& t : layout.y_ticks) y_label_w = std::max(y_label_w, text_width(t.label, tick_font()));
  a.left = kPad + (options.y_label.empty() ? 0 : label_font()->h + kPad) + y_label_w + kTickGap + kTickLength;
  a.width = options.width - a.left - kRightMargin;
  layout.x_ticks = choose_ticks({a.x_min, a.x_max, a.log_x, a.width - 1, /*horizontal=*/true});
  return layout;
}

struct Point {
  int x, y;
};

// Plottable points of one series as pixels, split into runs at skipped points.
std::vector<std::vector<Point>> pixel_runs(const PlotSeries& s, const PlotArea& a) {
  std::vector<std::vector<Point>> runs(1);
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (plottable(s.x[i], a.log_x) && plottable(s.y[i], a.log_y)) {
      runs.back().push_back({a.to_px_x(s.x[i]), a.to_px_y(s.y[i])});
    } else if (!runs.back().empty()) {
      runs.emplace_back();
    }
  }
  return runs;
}

void draw_marker(gdImagePtr canvas, Marker marker, int cx, int cy, Rgb colour) {
  const int c = gd_colour(colour);
  const int r = kMarkerRadius;
  auto polygon = [&](std::vector<gdPoint> points) {
    gdImageFilledPolygon(canvas, points.data(), static_cast<int>(points.size()), c);
  };
  switch (marker) {
    case Marker::kCircle:  // by spans: gdImageFilledEllipse draws a diamond at this size
      for (int dy = -r; dy <= r; ++dy) {
        const int half = static_cast<int>(std::sqrt(r * r + r - dy * dy));
        gdImageFilledRectangle(canvas, cx - half, cy + dy, cx + half, cy + dy, c);
      }
      break;
    case Marker::kSquare:  // a little smaller: a full square looks heavier than a circle
      gdImageFilledRectangle(canvas, cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1, c);
      break;
    case Marker::kTriangleUp:
      polygon({{cx, cy - r - 1}, {cx + r + 1, cy + r}, {cx - r - 1, cy + r}});
      break;
    case Marker::kDiamond:
      polygon({{cx, cy - r - 1}, {cx + r + 1, cy}, {cx, cy + r + 1}, {cx - r - 1, cy}});
      break;
    case Marker::kTriangleDown:
      polygon({{cx, cy + r + 1}, {cx + r + 1, cy - r}, {cx - r - 1, cy - r}});
      break;
    case Marker::kPlus:
      gdImageFilledRectangle(canvas, cx - r - 1, cy - 1, cx + r + 1, cy + 1, c);
      gdImageFilledRectangle(canvas, cx - 1, cy - r - 1, cx + 1, cy + r + 1, c);
      break;
    case Marker::kCross:
      gdImageSetThickness(canvas, 3);
      gdImageLine(canvas, cx - r, cy - r, cx + r, cy + r, c);
      gdImageLine(canvas, cx - r, cy + r, cx + r, cy - r, c);
      gdImageSetThickness(canvas, kLineThickness);
      break;
  }
}

Marker series_marker(size_t index) { return static_cast<Marker>(index % kMarkerCount); }

struct Box {
  int x, y, w, h;
  bool contains(int px, int py, int slack) const {
    return px >= x - slack && px < x + w + slack && py >= y - slack && py < y + h + slack;
  }
};

// How much of the data a legend at `box` would hide: markers, and points
// sampled every few pixels along the lines.
int covered(const Box& box, const std::vector<std::vector<std::vector<Point>>>& all_runs) {
  int count = 0;
  for (const auto& runs : all_runs) {
    for (const auto& run : runs) {
      for (size_t i = 0; i < run.size(); ++i) {
        count += 4 * box.contains(run[i].x, run[i].y, kMarkerRadius);
        if (i == 0) continue;
        const Point p = run[i - 1], q = run[i];
        const int steps = std::max(std::abs(q.x - p.x), std::abs(q.y - p.y)) / 4;
        for (int s = 1; s < steps; ++s) {
          count += box.contains(p.x + (q.x - p.x) * s / steps, p.y + (q.y - p.y) * s / steps, 1);
        }
      }
    }
  }
  return count;
}

void draw_legend(gdImagePtr canvas, const std::vector<PlotSeries>& series, const PlotArea& a,
                 const std::vector<std::vector<std::vector<Point>>>& all_runs) {
  gdFontPtr font = tick_font();
  std::vector<size_t> entries;
  for (size_t i = 0; i < series.size(); ++i) {
    if (!series[i].label.empty()) entries.push_back(i);
  }
  if (entries.empty()) return;

  const int text_x = kPad + kLegendSwatch + kPad;  // inside the box
  const int max_text_w = std::max(font->w, a.width / 2 - text_x - kPad);
  std::vector<std::string> labels;
  int widest = 0;
  for (size_t i : entries) {
    labels.push_back(fit_line(series[i].label, max_text_w, font));
    widest = std::max(widest, text_width(labels.back(), font));
  }
  const int w = text_x + widest + kPad;
  const int h = static_cast<int>(entries.size()) * kLegendLineHeight + kPad;

  const int left = a.left + kLegendInset, right = a.left + a.width - kLegendInset - w;
  const int top = a.top + kLegendInset, bottom = a.top + a.height - kLegendInset - h;
  const std::array<Box, 4> corners = {{{right, top, w, h}, {left, top, w, h}, {right, bottom, w, h},
                                       {left, bottom, w, h}}};
  Box box = corners[0];
  int best = covered(box, all_runs);
  for (const Box& candidate : corners) {
    const int score = covered(candidate, all_runs);
    if (score < best) {
      best = score;
      box = candidate;
    }
  }

  gdImageSetClip(canvas, a.left, a.top, a.left + a.width - 1, a.top + a.height - 1);
  gdImageFilledRectangle(canvas, box.x, box.y, box.x + w - 1, box.y + h - 1, gd_colour(kBackground));
  gdImageRectangle(canvas, box.x, box.y, box.x + w - 1, box.y + h - 1, gd_colour(kLegendBorder));
  for (size_t e = 0; e < entries.size(); ++e) {
    const size_t i = entries[e];
    const Rgb colour = plot_series_colour(i);
    const int cy = box.y + kPad / 2 + static_cast<int>(e) * kLegendLineHeight + kLegendLineHeight / 2;
    gdImageSetThickness(canvas, kLineThickness);
    gdImageLine(canvas, box.x + kPad, cy, box.x + kPad + kLegendSwatch, cy, gd_colour(colour));
    draw_marker(canvas, series_marker(i), box.x + kPad + kLegendSwatch / 2, cy, colour);
    gdImageSetThickness(canvas, 1);
    draw_string(canvas, font, box.x + text_x, cy - font->h / 2, labels[e], kText);
  }
  gdImageSetClip(canvas, 0, 0, gdImageSX(canvas) - 1, gdImageSY(canvas) - 1);
}

void draw_axes(gdImagePtr canvas, const Layout& layout) {
  const PlotArea& a = layout.area;
  gdFontPtr font = tick_font();
  const int right = a.left + a.width - 1, bottom = a.top + a.height - 1;
  for (const Tick& t : layout.x_ticks) {
    const int x = a.to_px_x(t.value);
    gdImageLine(canvas, x, a.top, x, bottom, gd_colour(kGrid));
    gdImageLine(canvas, x, bottom + 1, x, bottom + kTickLength, gd_colour(kFrame));
    const int w = text_width(t.label, font);
    const int label_x = std::clamp(x - w / 2, 0, gdImageSX(canvas) - w);
    draw_string(canvas, font, label_x, bottom + kTickLength + kTickGap, t.label, kText);
  }
  for (const Tick& t : layout.y_ticks) {
    const int y = a.to_px_y(t.value);
    gdImageLine(canvas, a.left, y, right, y, gd_colour(kGrid));
    gdImageLine(canvas, a.left - kTickLength, y, a.left - 1, y, gd_colour(kFrame));
    draw_string(canvas, font, a.left - kTickLength - kTickGap - text_width(t.label, font), y - font->h / 2,
                t.label, kText);
  }
}

void draw_titles(gdImagePtr canvas, const PlotArea& a, const PlotOptions& options) {
  if (!options.title.empty()) {
    gdFontPtr font = title_font();
    const std::string title = fit_line(options.title, options.width - 2 * kPad, font);
    const int w = text_width(title, font);
    const int x = std::clamp(a.left + (a.width - w) / 2, kPad, options.width - kPad - w);
    draw_string(canvas, font, x, kPad, title, kText);
  }
  gdFontPtr font = label_font();
  if (!options.x_label.empty()) {
    const std::string label = fit_line(options.x_label, a.width, font);
    draw_string(canvas, font, a.left + (a.width - text_width(label, font)) / 2, options.height - kPad - font->h,
                label, kText);
  }
  if (!options.y_label.empty()) {
    std::string label = fit_line(options.y_label, a.height, font);
    // gdImageStringUp starts at the bottom and runs upwards, glyph tops facing left.
    gdImageStringUp(canvas, font, kPad, a.top + (a.height + text_width(label, font)) / 2,
                    reinterpret_cast<unsigned char*>(label.data()), gd_colour(kText));
  }
}

}  // namespace

int PlotArea::to_px_x(double x) const {
  double t = (axis_coord(x, log_x) - axis_coord(x_min, log_x)) /
             (axis_coord(x_max, log_x) - axis_coord(x_min, log_x));
  t = std::isnan(t) ? -1e6 : std::clamp(t, -1e6, 1e6);  // far off the area rather than undefined
  return left + static_cast<int>(std::lround(t * (width - 1)));
}

int PlotArea::to_px_y(double y) const {
  double t = (axis_coord(y, log_y) - axis_coord(y_min, log_y)) /
             (axis_coord(y_max, log_y) - axis_coord(y_min, log_y));
  t = std::isnan(t) ? -1e6 : std::clamp(t, -1e6, 1e6);
  return top + static_cast<int>(std::lround((1 - t) * (height - 1)));
}

PlotArea plot_layout(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  return make_layout(series, options).area;
}

std::array<uint8_t, 3> plot_series_colour(size_t index) { return kPalette[index % kPalette.size()]; }

Image plot_lines(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  const Layout layout = make_layout(series, options);
  const PlotArea& a = layout.area;
  GdImage canvas = make_canvas(options.width, options.height, kBackground);
  gdImagePtr c = canvas.get();

  draw_axes(c, layout);

  std::vector<std::vector<std::vector<Point>>> all_runs;
  for (const PlotSeries& s : series) all_runs.push_back(pixel_runs(s, a));
  // Inside the frame only; all lines first, so no line crosses another series' markers.
  gdImageSetClip(c, a.left, a.top, a.left + a.width - 1, a.top + a.height - 1);
  gdImageSetThickness(c, kLineThickness);
  for (size_t i = 0; i < all_runs.size(); ++i) {
    const int colour = gd_colour(plot_series_colour(i));
    for (const auto& run : all_runs[i]) {
      for (size_t p = 1; p < run.size(); ++p) gdImageLine(c, run[p - 1].x, run[p - 1].y, run[p].x, run[p].y, colour);
    }
  }
  for (size_t i = 0; i < all_runs.size(); ++i) {
    for (const auto& run : all_runs[i]) {
      for (const Point& p : run) draw_marker(c, series_marker(i), p.x, p.y, plot_series_colour(i));
    }
  }
  gdImageSetThickness(c, 1);
  gdImageSetClip(c, 0, 0, options.width - 1, options.height - 1);

  gdImageRectangle(c, a.left, a.top, a.left + a.width - 1, a.top + a.height - 1, gd_colour(kFrame));
  draw_legend(c, series, a, all_runs);
  draw_titles(c, a, options);
  return to_image(c);
}

}  // namespace difftrain::eval
