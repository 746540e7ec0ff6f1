#include "trainer/ema_snapshots.h"

#include "trainer/checkpoint.h"
#include "trainer/power_ema.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <regex>

namespace difftrain {
namespace fs = std::filesystem;

namespace {
constexpr const char* kProfilesFile = "profiles.json";
std::string profile_file(size_t k) { return "profile-" + std::to_string(k) + ".pt"; }
}  // namespace

std::string ema_snapshots_dir(const std::string& run_dir) { return (fs::path(run_dir) / "ema-snapshots").string(); }

void write_ema_snapshot(const std::string& run_dir, int64_t step, const std::vector<torch::nn::Module*>& profiles,
                        const std::vector<double>& sigma_rels) {
  nlohmann::json info = {{"step", step}, {"sigma_rel", sigma_rels}, {"gamma", nlohmann::json::array()}};
  for (double s : sigma_rels) info["gamma"].push_back(sigma_rel_to_gamma(s));
  std::vector<std::pair<std::string, std::string>> files = {{kProfilesFile, info.dump(2) + "\n"}};
  for (size_t k = 0; k < profiles.size(); ++k) files.emplace_back(profile_file(k), serialise_module(*profiles[k]));
  write_checkpoint_directory(ema_snapshots_dir(run_dir), step, files);
}

std::vector<EmaSnapshotInfo> list_ema_snapshots(const std::string& run_dir, int64_t max_step) {
  std::vector<EmaSnapshotInfo> found;
  const fs::path root = ema_snapshots_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return found;
  static const std::regex name("^step-([0-9]{1,18})$");
  for (const auto& entry : fs::directory_iterator(root)) {
    std::smatch m;
    const std::string filename = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(filename, m, name)) continue;  // .tmp-step-* and others
    const int64_t step = std::stoll(m[1].str());
    if (step > max_step) continue;
    const auto dir = entry.path().string();
    const auto bytes = read_verified_files(dir, {kProfilesFile});
    EmaSnapshotInfo s;
    s.dir = dir;
    try {
      const auto j = nlohmann::json::parse(bytes.at(kProfilesFile));
      s.step = j.at("step").get<int64_t>();
      s.sigma_rel = j.at("sigma_rel").get<std::vector<double>>();
      s.gamma = j.at("gamma").get<std::vector<double>>();
    } catch (const std::exception& e) {
      throw CheckpointError("EMA snapshot file '" + (entry.path() / kProfilesFile).string() + "' is invalid: " + e.what());
    }
    if (s.step != step || s.sigma_rel.size() != s.gamma.size() || s.sigma_rel.empty())
      throw CheckpointError("EMA snapshot file '" + (entry.path() / kProfilesFile).string() + "' is invalid: step " +
                            std::to_string(s.step) + " in " + filename + ", " + std::to_string(s.sigma_rel.size()) +
                            " widths and " + std::to_string(s.gamma.size()) + " gammas");
    found.push_back(std::move(s));
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return found;
}

void load_ema_snapshot_profile(const EmaSnapshotInfo& snapshot, size_t k, torch::nn::Module& module) {
  const auto name = profile_file(k);
  const auto bytes = read_verified_files(snapshot.dir, {name});
  load_module_bytes(module, bytes.at(name), (fs::path(snapshot.dir) / name).string());
}

}  // namespace difftrain
