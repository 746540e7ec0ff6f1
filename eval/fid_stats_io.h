// FID statistics files: a GaussianStats (mean and covariance of the features of
// an image set) in HDF5, so the reference set's statistics are computed once.
//   datasets: mean (D) float64, covariance (D, D) float64
//   root attributes: format = "difftrain-fid-stats", format_version = 1 (int64),
//                    count (int64, images), source (string)
// h5py reads them as they are: h5py.File(p)["mean"][()], .attrs["count"].
#pragma once

#include <string>

#include "eval/fid.h"

namespace difftrain::eval {

inline constexpr const char* kFidStatsFormatName = "difftrain-fid-stats";
inline constexpr int64_t kFidStatsFormatVersion = 1;

// Written to "<path>.tmp", fsynced, renamed over path. Throws
// std::invalid_argument for inconsistent shapes, std::runtime_error naming the
// file when it cannot be written.
void save_gaussian_stats(const std::string& path, const GaussianStats& stats);

// Throws std::runtime_error naming the file and the dataset or attribute at
// fault (missing file, not HDF5, wrong format or version, wrong shape or dtype).
GaussianStats load_gaussian_stats(const std::string& path);

// An HDF5 file whose root attribute "format" is "difftrain-fid-stats"; never throws.
bool is_gaussian_stats_file(const std::string& path);

}  // namespace difftrain::eval
