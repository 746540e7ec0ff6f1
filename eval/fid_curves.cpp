#include "eval/fid_curves.h"

#include "eval/atomic_write.h"
#include "eval/image_io.h"
#include "eval/plot.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

namespace difftrain::eval {
namespace fs = std::filesystem;

FidCurve read_fid_curve(const std::string& run_dir, const std::string& label) {
  const auto path = (fs::path(run_dir) / "metrics.jsonl").string();
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot be read (expected the metrics.jsonl of a training run)");
  std::map<int64_t, std::pair<int64_t, double>> by_step;  // step -> (images seen, FID), the last one logged
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    const auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    // A line cut short by a crash mid-write is the file's last; anything else is damage.
    if (row.is_discarded()) {
      if (in.peek() == EOF) break;
      throw std::runtime_error(path + ": line " + std::to_string(number) + " is not JSON");
    }
    if (!row.is_object() || !row.contains("fid")) continue;
    if (!row["fid"].is_number() || !row.value("step", nlohmann::json()).is_number_integer() ||
        !row.value("images_seen", nlohmann::json()).is_number_integer())
      throw std::runtime_error(path + ": line " + std::to_string(number) +
                               ": an FID point needs integer \"step\" and \"images_seen\" and a numeric \"fid\"");
    by_step[row["step"].get<int64_t>()] = {row["images_seen"].get<int64_t>(), row["fid"].get<double>()};
  }
  if (by_step.empty())
    throw std::runtime_error(path + ": no FID point (train with eval.every > 0, eval.extractor and eval.reference)");
  FidCurve curve{label, {}, {}, {}};
  for (const auto& [step, point] : by_step) {
    curve.steps.push_back(step);
    curve.images_seen.push_back(point.first);
    curve.fid.push_back(point.second);
  }
  return curve;
}

std::optional<double> images_to_reach(const FidCurve& curve, double target) {
  for (size_t i = 0; i < curve.fid.size(); ++i) {
    if (!(curve.fid[i] <= target)) continue;
    if (i == 0) return static_cast<double>(curve.images_seen[0]);
    const double x0 = static_cast<double>(curve.images_seen[i - 1]), x1 = static_cast<double>(curve.images_seen[i]);
    const double y0 = curve.fid[i - 1], y1 = curve.fid[i];
    return y0 == y1 ? x1 : x0 + (x1 - x0) * (y0 - target) / (y0 - y1);
  }
  return std::nullopt;
}

namespace {
std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}
}  // namespace

std::string write_fid_curves(const std::vector<FidCurve>& curves, const std::string& out_dir,
                             const std::string& title) {
  if (curves.empty()) throw std::invalid_argument("write_fid_curves: no curve");
  fs::create_directories(out_dir);
  std::ostringstream csv;
  csv << "label,step,images_seen,fid\n";
  std::vector<PlotSeries> series;
  for (const auto& c : curves) {
    PlotSeries s{c.label, {}, {}};
    for (size_t i = 0; i < c.fid.size(); ++i) {
      csv << c.label << ',' << c.steps[i] << ',' << c.images_seen[i] << ',' << format("%.4f", c.fid[i]) << '\n';
      s.x.push_back(static_cast<double>(c.images_seen[i]));
      s.y.push_back(c.fid[i]);
    }
    series.push_back(std::move(s));
  }
  const auto csv_text = csv.str();
  write_file_atomically((fs::path(out_dir) / "fid_vs_images.csv").string(), csv_text.data(), csv_text.size());
  PlotOptions plot;
  plot.title = title;
  plot.x_label = "images seen";
  plot.y_label = "FID";
  plot.log_x = false;
  write_png((fs::path(out_dir) / "fid_vs_images.png").string(), plot_lines(series, plot));

  // The baseline may dip below its final FID before it ends: the fraction is against the images the
  // baseline itself first needed to get there, the stricter comparison.
  const auto& base = curves.front();
  const double target = base.fid.back();
  const double base_images = *images_to_reach(base, target);
  std::ostringstream table;
  table << "| run | final FID | best FID | images seen | images to reach " << base.label << "'s final FID "
        << format("%.2f", target) << " | fraction of " << base.label << "'s " << format("%.0f", base_images)
        << " |\n|---|---|---|---|---|---|\n";
  for (const auto& c : curves) {
    const auto reach = images_to_reach(c, target);
    table << "| " << c.label << " | " << format("%.2f", c.fid.back()) << " | "
          << format("%.2f", *std::min_element(c.fid.begin(), c.fid.end())) << " | " << c.images_seen.back() << " | "
          << (reach ? format("%.0f", *reach) : std::string("not reached")) << " | "
          << (reach ? format("%.2f", *reach / base_images) : std::string("-")) << " |\n";
  }
  const auto table_text = table.str();
  write_file_atomically((fs::path(out_dir) / "fid_vs_images.md").string(), table_text.data(), table_text.size());
  return table_text;
}

}  // namespace difftrain::eval
