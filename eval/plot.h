// plot_lines: line plots for evaluation sweeps (e.g. FID against NFE, one line
// per sampler), drawn with libgd and its built-in bitmap fonts so no font
// files or plotting stack are needed. PlotArea is the data -> pixel mapping,
// public so tests (and callers annotating a plot) can find where a point lands.
#pragma once

#include "eval/image_io.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::eval {

// One line with a marker at each point, drawn in the order given; a skipped
// point (see plot_lines) breaks the line there.
struct PlotSeries {
  std::string label;
  std::vector<double> x, y;
};

struct PlotOptions {
  std::string title, x_label, y_label;
  bool log_x = true;  // NFE axes are logarithmic
  bool log_y = false;
  int width = 800, height = 500;  // pixels; at least kMinPlotWidth x kMinPlotHeight
};

constexpr int kMinPlotWidth = 200;
constexpr int kMinPlotHeight = 150;

// The rectangle of the image holding the data, and the data range it shows.
// Pixel (left, top + height - 1) shows (x_min, y_min); (left + width - 1, top)
// shows (x_max, y_max). On a log axis positions are linear in log10 of the value.
struct PlotArea {
  int left = 0, top = 0, width = 1, height = 1;
  double x_min = 1, x_max = 10, y_min = 0, y_max = 1;  // on log axes both bounds > 0
  bool log_x = false, log_y = false;

  int to_px_x(double x) const;  // column
  int to_px_y(double y) const;  // row: larger y is higher up, i.e. a smaller row
};

// The area plot_lines draws into for these arguments: the range covers every
// plotted point with a small margin, so markers are not cut by the frame.
// Throws like plot_lines.
PlotArea plot_layout(const std::vector<PlotSeries>& series, const PlotOptions& options);

// Colour of series `index` (a fixed palette of 10, then repeating; the marker
// shape cycles with period 7, so colour and shape repeat together only after 70).
std::array<uint8_t, 3> plot_series_colour(size_t index);

// A line plot: frame, ticks with numeric labels (log axes: 1, 2, 5 x 10^k
// inside the range, thinned to 10^k when crowded), gridlines, one colour and
// marker per series, a legend of the non-empty labels in the corner covering
// the fewest points, title and axis labels (the y label reads upwards).
// Points with a non-finite coordinate, or a non-positive one on a log axis, are
// skipped; a series may be empty, and a plot with no points still draws its axes.
// Throws std::invalid_argument if a series' x and y lengths differ (naming the
// series) or the size is below the minimum.
Image plot_lines(const std::vector<PlotSeries>& series, const PlotOptions& options);

}  // namespace difftrain::eval
