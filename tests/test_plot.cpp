// Line plots: the data -> pixel mapping, where points and colours land in the
// rendered image, argument checks, skipped points, and an example FID-vs-NFE plot.
#include "eval/image_io.h"
#include "eval/plot.h"

#include <gtest/gtest.h>

#include "tests/test_dirs.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace de = difftrain::eval;
namespace fs = std::filesystem;

namespace {

using Rgb = std::array<uint8_t, 3>;

Rgb pixel(const de::Image& image, int64_t y, int64_t x) {
  const uint8_t* p = image.rgb.data() + (y * image.width + x) * 3;
  return {p[0], p[1], p[2]};
}

// Whether `colour` occurs within `radius` pixels (square window) of (x, y).
bool colour_near(const de::Image& image, int x, int y, Rgb colour, int radius) {
  for (int64_t row = std::max(0, y - radius); row <= std::min<int64_t>(image.height - 1, y + radius); ++row)
    for (int64_t col = std::max(0, x - radius); col <= std::min<int64_t>(image.width - 1, x + radius); ++col)
      if (pixel(image, row, col) == colour) return true;
  return false;
}

int64_t count_colour(const de::Image& image, Rgb colour) {
  int64_t n = 0;
  for (int64_t y = 0; y < image.height; ++y)
    for (int64_t x = 0; x < image.width; ++x) n += pixel(image, y, x) == colour;
  return n;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

// FID falling with NFE, roughly like a sampler sweep.
de::PlotSeries fid_curve(const std::string& label, double floor, double scale) {
  de::PlotSeries s{label, {}, {}};
  for (double nfe : {10.0, 20.0, 35.0, 50.0, 100.0, 200.0, 500.0, 1000.0}) {
    s.x.push_back(nfe);
    s.y.push_back(floor + scale / nfe);
  }
  return s;
}

}  // namespace

TEST(PlotArea, LogAxisSpacesDecadesEqually) {
  de::PlotArea area;
  area.left = 50;
  area.top = 20;
  area.width = 401;
  area.height = 201;
  area.x_min = 1;
  area.x_max = 10000;  // 4 decades over 400 px: 100 px each
  area.log_x = true;
  area.y_min = 0;
  area.y_max = 100;
  EXPECT_EQ(area.to_px_x(1), 50);
  EXPECT_EQ(area.to_px_x(10000), 450);
  EXPECT_EQ(area.to_px_x(100) - area.to_px_x(10), area.to_px_x(1000) - area.to_px_x(100));
  EXPECT_EQ(area.to_px_x(100) - area.to_px_x(10), 100);
  // Linear y, pointing up.
  EXPECT_EQ(area.to_px_y(0), 220);
  EXPECT_EQ(area.to_px_y(100), 20);
  EXPECT_EQ(area.to_px_y(50), 120);

  // An awkward range: equal ratios still give equal spacing, up to rounding.
  area.x_min = 3.7;
  area.x_max = 1234;
  area.width = 517;
  EXPECT_NEAR(area.to_px_x(100) - area.to_px_x(10), area.to_px_x(1000) - area.to_px_x(100), 1);
  EXPECT_NEAR(area.to_px_x(40) - area.to_px_x(20), area.to_px_x(20) - area.to_px_x(10), 1);

  area.log_y = true;
  area.y_min = 1;
  area.y_max = 1000;
  area.height = 301;
  EXPECT_EQ(area.to_px_y(10) - area.to_px_y(100), 100);
}

TEST(Plot, ImageHasRequestedSize) {
  de::PlotOptions options;
  options.width = 640;
  options.height = 360;
  options.title = "FID vs NFE";
  const de::Image image = de::plot_lines({fid_curve("euler", 5, 300)}, options);
  EXPECT_EQ(image.width, 640);
  EXPECT_EQ(image.height, 360);
  EXPECT_NO_THROW(de::check_image(image));

  options.width = 100;
  EXPECT_THROW(de::plot_lines({}, options), std::invalid_argument);
}

TEST(Plot, PointsLandWhereExpected) {
  de::PlotOptions options;
  options.title = "points";
  options.x_label = "NFE";
  options.y_label = "FID";
  // Series 0 runs along the bottom; series 1 is one point high up in the middle.
  const de::PlotSeries low{"low", {10, 30, 100, 300, 1000}, {1, 1.5, 1, 1.5, 1}};
  const de::PlotSeries lone{"lone", {60}, {40}};
  const std::vector<de::PlotSeries> series = {low, lone};
  const de::Image image = de::plot_lines(series, options);
  const de::PlotArea area = de::plot_layout(series, options);

  ASSERT_GT(area.width, options.width / 2);
  ASSERT_GT(area.height, options.height / 2);
  EXPECT_GE(area.left, 0);
  EXPECT_LE(area.left + area.width, options.width);
  EXPECT_LE(area.top + area.height, options.height);
  EXPECT_LT(area.x_min, 10);
  EXPECT_GT(area.x_max, 1000);

  const Rgb lone_colour = de::plot_series_colour(1);
  const int x = area.to_px_x(60), y = area.to_px_y(40);
  // Strictly inside the frame, away from its edge, so the marker is whole.
  EXPECT_GT(x, area.left + 4);
  EXPECT_GT(y, area.top + 4);
  EXPECT_EQ(pixel(image, y, x), lone_colour);
  EXPECT_TRUE(colour_near(image, x, y, lone_colour, 2));
  // Nowhere else in the plot area except the legend: a far-off spot shows no such colour.
  EXPECT_FALSE(colour_near(image, area.to_px_x(300), area.to_px_y(40), lone_colour, 10));

  // Series 0's markers sit where its data maps to.
  const Rgb low_colour = de::plot_series_colour(0);
  for (size_t i = 0; i < low.x.size(); ++i) {
    EXPECT_TRUE(colour_near(image, area.to_px_x(low.x[i]), area.to_px_y(low.y[i]), low_colour, 1)) << i;
  }
}

TEST(Plot, SeriesGetDistinctColours) {
  for (size_t i = 0; i < 10; ++i) {
    for (size_t j = i + 1; j < 10; ++j) {
      const Rgb a = de::plot_series_colour(i), b = de::plot_series_colour(j);
      const int distance = std::abs(a[0] - b[0]) + std::abs(a[1] - b[1]) + std::abs(a[2] - b[2]);
      EXPECT_GT(distance, 60) << i << " vs " << j;
    }
  }

  std::vector<de::PlotSeries> series;
  for (int i = 0; i < 3; ++i) series.push_back(fid_curve("s" + std::to_string(i), 3 + 10 * i, 200));
  const de::Image image = de::plot_lines(series, de::PlotOptions{});
  const de::PlotArea area = de::plot_layout(series, de::PlotOptions{});
  for (size_t i = 0; i < series.size(); ++i) {
    const Rgb colour = de::plot_series_colour(i);
    EXPECT_GT(count_colour(image, colour), 100) << i;
    // The 100-NFE point is in the middle of the plot, clear of the legend.
    EXPECT_EQ(pixel(image, area.to_px_y(series[i].y[4]), area.to_px_x(series[i].x[4])), colour) << i;
  }
}

TEST(Plot, MismatchedLengthsThrowNamingSeries) {
  const std::vector<de::PlotSeries> series = {fid_curve("euler", 5, 100), {"heun", {10, 20, 30}, {1, 2}}};
  EXPECT_THROW(de::plot_lines(series, de::PlotOptions{}), std::invalid_argument);
  const std::string what = error_of([&] { de::plot_lines(series, de::PlotOptions{}); });
  EXPECT_NE(what.find("heun"), std::string::npos) << what;
  EXPECT_THROW(de::plot_layout(series, de::PlotOptions{}), std::invalid_argument);
}

TEST(Plot, UnplottablePointsAreSkipped) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<de::PlotSeries> series = {
      {"bad x", {-5, 0, 10, 100, 1000}, {1, 2, 3, 4, 5}},
      {"bad y", {20, 40, 60, 80}, {nan, 2, inf, 3}},
      {"empty", {}, {}},
  };
  de::PlotOptions options;
  const de::Image image = de::plot_lines(series, options);
  EXPECT_EQ(image.width, options.width);
  const de::PlotArea area = de::plot_layout(series, options);
  EXPECT_GT(area.x_min, 0);
  EXPECT_LT(area.x_min, 10);  // the range follows the plottable points only
  EXPECT_GT(area.x_max, 1000);
  EXPECT_LT(area.x_max, 2000);
  EXPECT_LT(area.y_max, 6);
  EXPECT_TRUE(colour_near(image, area.to_px_x(10), area.to_px_y(3), de::plot_series_colour(0), 1));

  // Non-positive y on a log y axis; every point skipped still gives axes.
  options.log_y = true;
  EXPECT_NO_THROW(de::plot_lines({{"zero fid", {10, 20}, {0, -1}}}, options));
  const de::Image empty = de::plot_lines({}, options);
  EXPECT_EQ(empty.height, options.height);
  // The frame is drawn: the area's corner is not background.
  const de::PlotArea empty_area = de::plot_layout({}, options);
  EXPECT_NE(pixel(empty, empty_area.top, empty_area.left), (Rgb{255, 255, 255}));
}

TEST(Plot, ExampleFidAgainstNfe) {
  const std::vector<de::PlotSeries> series = {
      fid_curve("euler", 4.5, 400),
      fid_curve("heun (2nd order)", 3.2, 150),
      fid_curve("dpm++ 2m", 3.0, 90),
  };
  de::PlotOptions options;
  options.title = "FID against NFE per sampler";
  options.x_label = "NFE (network evaluations)";
  options.y_label = "FID";
  const fs::path path = fresh_test_dir() / "fid_vs_nfe.png";
  de::write_png(path.string(), de::plot_lines(series, options));
  const de::Image back = de::read_png(path.string());
  EXPECT_EQ(back.width, options.width);
  EXPECT_EQ(back.height, options.height);
}
