// FID against images seen: the training-time FID points (`eval.every`) that each
// run appends to run.dir/metrics.jsonl, read back and compared across runs
// (`difftrain eval curves`). The first run is the baseline: each run is reported
// with the images it needed to reach the baseline's final FID.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace difftrain::eval {

struct FidCurve {
  std::string label;
  std::vector<int64_t> steps, images_seen;  // ascending
  std::vector<double> fid;
};

// The FID points of run_dir/metrics.jsonl, by images seen. A step logged more than
// once (a resumed or rolled-back run evaluating it again) keeps its last point.
// std::runtime_error naming the file when it is missing, a line is not JSON, or
// it holds no FID point (eval.every was 0).
FidCurve read_fid_curve(const std::string& run_dir, const std::string& label);

// Images seen when the curve first reaches FID <= target, interpolated linearly
// between the two points around the crossing; the first point's images if it is
// already below; nullopt if the curve never gets there.
std::optional<double> images_to_reach(const FidCurve& curve, double target);

// Writes out_dir/fid_vs_images.csv (label,step,images_seen,fid), fid_vs_images.png
// and fid_vs_images.md (a table: final and best FID, images to reach the first curve's
// final FID, and that as a fraction of the images the first curve itself first needed
// to reach it). Returns the table.
std::string write_fid_curves(const std::vector<FidCurve>& curves, const std::string& out_dir,
                             const std::string& title);

}  // namespace difftrain::eval
