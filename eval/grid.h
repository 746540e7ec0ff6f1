// Picture grids for humans looking at samples: labelled grids (one prompt per
// cell) and comparison grids (e.g. one column per sampler, one row per prompt).
// Images are upscaled with nearest neighbour so small samples stay crisp, and
// labels use gd's built-in bitmap font, so no font files are needed.
#pragma once

#include "eval/image_io.h"

#include <string>
#include <vector>

namespace difftrain::eval {

// Cells in row-major order, `columns` per row (fewer if there are fewer images).
// Each cell is the image upscaled by `upscale` with its label in a dark strip
// below, wrapped to the cell width (at most 3 lines, then truncated).
// All images must have the same size; labels.size() == images.size().
Image make_labelled_grid(const std::vector<Image>& images, const std::vector<std::string>& labels,
                         int columns, int upscale);

// columns[c][r] is drawn in column c, row r; column titles on top, row labels
// at the left. Every column has row_labels.size() images, all of one size.
Image make_comparison_grid(const std::vector<std::vector<Image>>& columns,
                           const std::vector<std::string>& column_titles,
                           const std::vector<std::string>& row_labels, int upscale);

}  // namespace difftrain::eval
