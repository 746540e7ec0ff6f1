// Checkpoints: <run.dir>/checkpoints/step-000001000/
//   model.pt, ema.pt, optimizer.pt   (rank 0; the weights are identical on every rank)
//   state.json                       (step, images seen, data position, loss scale, world size)
// No generator state: training draws are a function of the data position (trainer/sample_draws.h).
//   config.yaml                      (the resolved configuration)
// Written into a hidden temporary directory, every file fsynced, then renamed:
// a directory under the final name is always complete, so a crash at any
// moment leaves either the previous checkpoints or the new one, never half.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <optional>
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
// Newest complete checkpoint under `run_dir`/checkpoints, if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);
// Accepts a checkpoint directory or a run directory (then its newest checkpoint);
// throws CheckpointError naming the path when there is none.
std::string resolve_checkpoint(const std::string& path);

struct CheckpointContents {
  torch::nn::Module& model;
  torch::nn::Module& ema;
  torch::optim::Optimizer& optimizer;
};

// Collective: every rank calls it. Keeps the newest `keep` checkpoints.
std::string save_checkpoint(Communicator& comm, const std::string& run_dir, const TrainingState& state,
                            const CheckpointContents& contents, const std::string& config_yaml, int64_t keep);

// Loads model, EMA and optimizer. Every rank reads the shared files.
TrainingState load_checkpoint(const std::string& dir, CheckpointContents& contents);

// Only the EMA weights, for sampling and export.
void load_ema_weights(const std::string& dir, torch::nn::Module& model);
TrainingState read_training_state(const std::string& dir);
std::string read_checkpoint_config(const std::string& dir);

// Removes leftover temporary checkpoint directories from interrupted writes.
void remove_incomplete_checkpoints(const std::string& run_dir);

}  // namespace difftrain
