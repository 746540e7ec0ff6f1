// Resuming a run.dir with a changed configuration (docs/CONFIG.md, "Resume").
//
// A run resumes its newest checkpoint; the configuration it resumes with is
// compared with the one the checkpoint saved (its config.yaml):
//   * a change to a key that defines what the weights are or which data stream
//     the data position counts in (is_geometry_key) is an error listing every
//     such difference, so two runs are never silently mixed;
//   * any other change (lr, max_steps, logging, eval, ...) is allowed, logged one
//     line per key and recorded in <run.dir>/metrics.jsonl as
//     {"event": "config_change", "step": N, "changes": {key: {"checkpoint": X, "run": Y}}}.
// Keys the checkpoint's file does not set (added to the schema since) are not
// differences: the checkpoint ran with their defaults' behaviour.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace difftrain {

struct ConfigChange {
  std::string key;
  std::string checkpoint_value;  // compact JSON (config_values)
  std::string run_value;
  bool geometry = false;         // is_geometry_key(key): resuming across it is an error
};

// run.seed, data.dir, data.synthetic_count, data.image_size, data.channels,
// model.* except model.dropout, diffusion.* (the reasons are in docs/CONFIG.md).
bool is_geometry_key(const std::string& key);

// The keys `saved_yaml` sets whose value differs from `run`'s, in schema order.
// Paths (data.dir, run.dir) naming the same existing directory are equal.
// `unknown` (optional) receives the keys of `saved_yaml` this build does not know.
std::vector<ConfigChange> diff_saved_config(const std::string& saved_yaml, const std::string& source_name,
                                            const Config& run, std::vector<std::string>* unknown = nullptr);

// Which keys a resume may not change, and how the error describes a run that differs in them.
// The diffusion trainer's is the default; the autoencoder trainer has its own (its network
// keys are autoencoder.*).
struct ResumeKeys {
  std::function<bool(const std::string& key)> is_geometry = is_geometry_key;
  std::string what = "a run with another model or data";
};

// Throws ConfigError listing every change of a geometry key between the config saved in
// `checkpoint_dir` and `run`, and how to proceed.
void refuse_geometry_changes(const Config& run, const std::string& checkpoint_dir, const ResumeKeys& keys = {});

// Rank 0, after the checkpoint in `checkpoint_dir` (resumed at `step`) is loaded:
// refuse_geometry_changes; then logs the other changes and records them in metrics.jsonl
// as a config_change event (nothing when there are none).
void check_resumed_config(const Config& run, const std::string& checkpoint_dir, int64_t step,
                          const ResumeKeys& keys = {});

}  // namespace difftrain
