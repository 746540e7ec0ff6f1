// Snapshots of the power-function EMA profiles (trainer/power_ema.h) for post-hoc EMA
// reconstruction: <run.dir>/ema-snapshots/step-N/ holds profile-<k>.pt (the k-th profile's
// weights after step N), profiles.json ({"step", "sigma_rel": [...], "gamma": [...]}) and a
// manifest.json, written and verified like a checkpoint (trainer/checkpoint.h). Snapshots are
// never pruned: reconstruction wants them all (EDM2 stores one every ~8M images).
// A resumed run rewrites the snapshots after its checkpoint with the same bits.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain {

std::string ema_snapshots_dir(const std::string& run_dir);

// Rank 0 only. CheckpointError when it cannot be written.
void write_ema_snapshot(const std::string& run_dir, int64_t step, const std::vector<torch::nn::Module*>& profiles,
                        const std::vector<double>& sigma_rels);

struct EmaSnapshotInfo {
  std::string dir;
  int64_t step = 0;
  std::vector<double> sigma_rel, gamma;  // one per profile-<k>.pt
};
// The snapshots of the run with step <= max_step, by step; each one's profiles.json verified.
// CheckpointError naming the directory when one is damaged.
std::vector<EmaSnapshotInfo> list_ema_snapshots(const std::string& run_dir, int64_t max_step);
// Loads profile k of a snapshot into `module` (verified against its manifest).
void load_ema_snapshot_profile(const EmaSnapshotInfo& snapshot, size_t k, torch::nn::Module& module);

}  // namespace difftrain
