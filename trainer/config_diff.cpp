#include "trainer/config_diff.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "trainer/checkpoint.h"

namespace difftrain {
namespace fs = std::filesystem;

bool is_geometry_key(const std::string& key) {
  // run.seed: the data order and every sample's draws follow from it, so the data
  // position would count in another permutation. data.synthetic_count: the built-in
  // dataset's size. train.ema_profiles: the kept averages mean their widths. model.dropout is regularisation: it adds no weight and changes none.
  // model.checkpoint_activations trades compute for memory; the network is the same.
  static const std::set<std::string> keys{"run.seed",          "data.dir",           "data.synthetic_count",
                                          "data.image_size",   "data.channels",      "data.latents",
                                          "data.latent_channels", "data.latent_size", "data.latent_scale",
                                          "data.latent_shift", "data.latent_encoder",
                                          "train.ema_profiles"};
  if (keys.count(key)) return true;
  if (key == "model.dropout" || key == "model.checkpoint_activations") return false;
  // How the loss weighs and samples timesteps, and offset noise: training choices, the network means the same.
  static const std::set<std::string> training{"diffusion.loss_weighting",  "diffusion.min_snr_gamma",
                                              "diffusion.timestep_sampling", "diffusion.lognormal_mean",
                                              "diffusion.lognormal_std",   "diffusion.offset_noise",
                                              "diffusion.logit_normal_mean", "diffusion.logit_normal_std"};
  if (training.count(key)) return false;
  return key.rfind("model.", 0) == 0 || key.rfind("diffusion.", 0) == 0;
}

namespace {

// "runs/x" and "/home/me/runs/x" name one directory: not a change.
bool same_directory(const std::string& a_json, const std::string& b_json) {
  const auto a = nlohmann::json::parse(a_json), b = nlohmann::json::parse(b_json);
  if (!a.is_string() || !b.is_string()) return false;
  std::error_code ec;
  return fs::equivalent(a.get<std::string>(), b.get<std::string>(), ec) && !ec;
}

}  // namespace

std::vector<ConfigChange> diff_saved_config(const std::string& saved_yaml, const std::string& source_name,
                                            const Config& run, std::vector<std::string>* unknown) {
  std::vector<std::string> present, unknown_keys;
  const Config saved = parse_saved_config(saved_yaml, source_name, &present, &unknown_keys);
  if (unknown) *unknown = unknown_keys;
  const std::set<std::string> set_by_file(present.begin(), present.end());
  std::map<std::string, std::string> saved_values;
  for (auto& [key, value] : config_values(saved)) saved_values[key] = value;
  std::vector<ConfigChange> changes;
  for (const auto& [key, run_value] : config_values(run)) {
    if (!set_by_file.count(key)) continue;
    const std::string& saved_value = saved_values.at(key);
    if (saved_value == run_value) continue;
    if ((key == "data.dir" || key == "run.dir") && same_directory(saved_value, run_value)) continue;
    changes.push_back({key, saved_value, run_value, is_geometry_key(key)});
  }
  return changes;
}

void refuse_geometry_changes(const Config& run, const std::string& checkpoint_dir, const ResumeKeys& keys) {
  const auto changes = diff_saved_config(read_checkpoint_config(checkpoint_dir), checkpoint_dir + "/config.yaml", run);
  std::string geometry;
  for (const auto& c : changes)
    if (keys.is_geometry(c.key))
      geometry += (geometry.empty() ? "" : "; ") + c.key + ": checkpoint has " + c.checkpoint_value +
                  ", this run has " + c.run_value;
  if (!geometry.empty())
    throw ConfigError("run.dir " + run.run.dir + " holds checkpoint " + checkpoint_dir + " of " + keys.what + ": " +
                      geometry +
                      ". These keys define the checkpoint's weights or its data position, so resuming would mix two "
                      "runs: use another run.dir to start a new run, or set them back to the checkpoint's values to "
                      "resume it");
}

void check_resumed_config(const Config& run, const std::string& checkpoint_dir, int64_t step, const ResumeKeys& keys) {
  refuse_geometry_changes(run, checkpoint_dir, keys);
  std::vector<std::string> unknown;
  const auto changes =
      diff_saved_config(read_checkpoint_config(checkpoint_dir), checkpoint_dir + "/config.yaml", run, &unknown);
  for (const auto& key : unknown)
    spdlog::warn("config: the checkpoint's config.yaml sets '{}', which this build does not know; not compared", key);
  if (changes.empty()) return;
  nlohmann::json recorded = nlohmann::json::object();
  for (const auto& c : changes) {
    spdlog::info("config: {} changed since the checkpoint: {} -> {}", c.key, c.checkpoint_value, c.run_value);
    recorded[c.key] = {{"checkpoint", nlohmann::json::parse(c.checkpoint_value)},
                       {"run", nlohmann::json::parse(c.run_value)}};
  }
  std::ofstream out(fs::path(run.run.dir) / "metrics.jsonl", std::ios::app);
  out << nlohmann::json{{"event", "config_change"}, {"step", step}, {"changes", recorded}}.dump() << "\n";
  if (!out) throw ConfigError("cannot append to " + (fs::path(run.run.dir) / "metrics.jsonl").string());
}

}  // namespace difftrain
