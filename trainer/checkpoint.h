// Checkpoints: <run.dir>/checkpoints/step-000001000/ (docs/CHECKPOINTS.md)
//   model.pt, ema.pt, optimizer.pt   (LibTorch archives; the weights are identical on every rank)
//   ema-profile-<k>.pt               (with train.ema_profiles: the k-th power-function EMA, trainer/power_ema.h)
//   config.yaml                      (the resolved configuration)
//   state.json                       (step, images seen, data position, loss scale, world size)
//   manifest.json                    (size and SHA-256 of each file above; trainer/checkpoint_manifest.h)
// No generator state: training draws are a function of the data position (trainer/sample_draws.h).
//
// Writing (rank 0): everything is serialised to memory, hashed once, written with
// checked write + fsync into a hidden temporary directory, manifest.json last,
// then the directory is renamed: one under the final name is always complete.
// A full disk is a CheckpointError naming the file; the temporary directory is
// removed and the older checkpoints are untouched.
//
// Reading verifies every file against the manifest (size, SHA-256) and the
// steps of manifest, directory name and state.json against each other, and
// validates state.json. Resuming takes the newest checkpoint that verifies and
// moves each damaged newer one aside to corrupt-step-N (never deleted). Only
// rank 0 reads the files; the other ranks receive the bytes over MPI, so runs
// whose ranks have node-local disks resume too.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain {

class Communicator;

struct TrainingState {
  int64_t step = 0;             // optimizer steps completed
  int64_t images_seen = 0;      // over all ranks
  int64_t epoch = 0;            // data position: epoch of the next batch ...
  int64_t samples_in_epoch = 0; // ... and samples of that epoch already consumed (all ranks)
  double loss_scale = 1.0;
  int64_t loss_scale_clean_steps = 0;
  int64_t world_size = 1;
};

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string checkpoint_name(int64_t step);
std::string checkpoints_dir(const std::string& run_dir);
// Newest checkpoint under `run_dir`/checkpoints that was completely written
// (has its manifest), whether or not it still verifies.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// The verification of one file: "ok", "missing", "size mismatch (...)",
// "checksum mismatch (...)", "not listed in the manifest", "invalid (...)".
struct FileCheck {
  std::string name;  // manifest.json, model.pt, ema.pt, optimizer.pt, config.yaml, state.json
  std::string result;
  bool ok() const { return result == "ok"; }
};

struct CheckpointCheck {
  std::string dir;
  std::vector<FileCheck> files;  // manifest.json first, then the checkpoint's files
  std::string problem;           // empty when it verifies; else every failure, "model.pt: checksum mismatch (...)"
  bool ok() const { return problem.empty(); }
};

// Reads and checks every file of the checkpoint directory `dir`; damage is reported, not thrown.
CheckpointCheck verify_checkpoint(const std::string& dir);

// `path` itself when it is a checkpoint directory, else the newest checkpoint of
// the run directory `path`, verified or not (for checkpoint-info).
std::string find_checkpoint(const std::string& path);
// A checkpoint that verifies, for sampling and export. A checkpoint directory
// that does not verify is a CheckpointError naming the file and what is wrong.
// For a run directory, its newest checkpoint that verifies; newer damaged ones
// are named in one warning each and left where they are.
std::string resolve_checkpoint(const std::string& path);

struct CheckpointContents {
  torch::nn::Module& model;
  torch::nn::Module& ema;
  torch::optim::Optimizer& optimizer;
  // train.ema_profiles' averages, saved as ema-profile-<k>.pt; a checkpoint without them cannot
  // be resumed by a run that has them (the averages cannot be rebuilt).
  std::vector<torch::nn::Module*> ema_profiles = {};
};

// "ema-profile-<k>.pt"
std::string ema_profile_file(size_t k);

// Collective: every rank calls it. Rank 0 writes; keeps the newest `keep`
// complete checkpoints (directories moved aside as corrupt-* are never counted
// nor deleted). Throws CheckpointError on rank 0 when the checkpoint cannot be
// written (before the barrier: the caller ends the job).
std::string save_checkpoint(Communicator& comm, const std::string& run_dir, const TrainingState& state,
                            const CheckpointContents& contents, const std::string& config_yaml, int64_t keep);

struct ResumePoint {
  std::string dir;  // the checkpoint resumed from
  TrainingState state;
};

// Collective. Rank 0 picks the newest checkpoint under `run_dir` that verifies,
// moving damaged newer ones aside (one warning each), reads its files and
// broadcasts them; every rank loads model, EMA and optimizer from memory.
// std::nullopt when the run has no checkpoint; CheckpointError (rank 0) when
// there are checkpoints and none verifies.
std::optional<ResumePoint> resume_from_newest_checkpoint(Communicator& comm, const std::string& run_dir,
                                                         const CheckpointContents& contents);

// Loads model, EMA and optimizer of the checkpoint `dir` in this process after
// verifying it; CheckpointError naming the file when it does not verify.
TrainingState load_checkpoint(const std::string& dir, const CheckpointContents& contents);

// Only the EMA weights (verified against the manifest), for sampling and export.
void load_ema_weights(const std::string& dir, torch::nn::Module& model);
// One module archive of the checkpoint (ema.pt, ema-profile-<k>.pt, ...), verified against the manifest.
void load_checkpoint_module(const std::string& dir, const std::string& name, torch::nn::Module& module);
// A copy of the verified checkpoint `source_dir` as <out_run_dir>/checkpoints/step-N, its EMA
// replaced by `ema` (and the manifest by a new one): a checkpoint that sample, export and eval
// sweep take like any other (ema-reconstruct). Written like save_checkpoint (temporary
// directory, fsync, rename). Returns the new directory.
std::string write_checkpoint_with_ema(const std::string& source_dir, const std::string& out_run_dir,
                                      const torch::nn::Module& ema);
// state.json, validated: CheckpointError naming the file, key and value otherwise.
TrainingState read_training_state(const std::string& dir);
std::string read_checkpoint_config(const std::string& dir);

// The writer and reader of every manifest-verified directory (checkpoints, EMA snapshots):
// `files` (name, bytes) written as root/step-N like a checkpoint (temporary directory, each file
// written and fsynced, manifest.json last, rename; CheckpointError naming what failed, the
// temporary directory removed), and the named files of such a directory read back, verified
// against its manifest (CheckpointError naming each damaged file).
std::filesystem::path write_checkpoint_directory(const std::filesystem::path& root, int64_t step,
                                                 const std::vector<std::pair<std::string, std::string>>& files);
std::map<std::string, std::string> read_verified_files(const std::string& dir, const std::vector<std::string>& names);
// A module's LibTorch archive in memory, and back (CheckpointError naming `path` when it does not load).
std::string serialise_module(const torch::nn::Module& module);
void load_module_bytes(torch::nn::Module& module, const std::string& bytes, const std::string& path);

// Removes leftover temporary checkpoint directories from interrupted writes.
void remove_incomplete_checkpoints(const std::string& run_dir);

}  // namespace difftrain
