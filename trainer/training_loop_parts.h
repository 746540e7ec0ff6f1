// Pieces of a training loop shared by the diffusion trainer (trainer/trainer.cpp)
// and the autoencoder trainer (trainer/autoencoder_trainer.cpp), so both read
// their data, report, clip, schedule, count the data position and test-inject
// faults the same way:
//   image_geometry_of, check_user_data_dir, prepare_data, loader_options_of  (data)
//   open_training_metrics                                                     (monitoring)
//   global_grad_norm, clip_gradients, set_learning_rate, all_finite           (optimizer step)
//   resume_or_start                                                           (start-up)
//   advance_data_position, stop_requested_on_any_rank                         (bookkeeping)
//   injected_steps, append_jsonl                                              (tests, metrics.jsonl)
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "data/loader.h"
#include "monitoring/metrics.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace difftrain {

class Communicator;
class DynamicLossScaler;

// (data.image_size, data.image_size, data.channels): what the shards' images must be.
data::ImageGeometry image_geometry_of(const Config& config);

// A user's data directory is only ever read: without data.synthetic a missing
// or empty data.dir is a ConfigError naming it, never a reason to write a dataset.
void check_user_data_dir(const Config& config);

// Collective. Rank 0 checks data.dir, or writes the built-in dataset there when
// data.synthetic asks for it; the other ranks wait.
void prepare_data(const Config& config, Communicator& comm);

// This rank's share of data.dir's images (no text embeddings): batch_size, rank, world, seed, read-ahead.
data::LoaderOptions loader_options_of(const Config& config, const Communicator& comm);

// The per-rank Prometheus endpoint (monitoring.enabled, on port + local rank) and/or the
// Pushgateway; null when both are off. Call after the run lock and before anything that can
// fail: from then on a failure leaves by ~TrainingMetrics, which pushes state failed.
std::unique_ptr<monitoring::TrainingMetrics> open_training_metrics(const Config& config, int rank, int local_rank);

// Collective. The newest checkpoint under run.dir that verifies (rank 0 reads it, every rank
// receives it) loaded into `contents` and `scaler`, its state returned with this run's world
// size — or a fresh state when there is none; then rank 0's weights and EMA weights are
// broadcast, so every rank starts from the same ones. On resume rank 0 first runs
// check_config(checkpoint dir, step), e.g. check_resumed_config.
TrainingState resume_or_start(Communicator& comm, const Config& config, const CheckpointContents& contents,
                              DynamicLossScaler& scaler,
                              const std::function<void(const std::string& dir, int64_t step)>& check_config);

// Global L2 norm of the gradients.
double global_grad_norm(const std::vector<torch::Tensor>& grads);
// Scales the gradients in place to `max_norm` when `norm` exceeds it (max_norm 0: off).
void clip_gradients(const std::vector<torch::Tensor>& grads, double norm, double max_norm);
// AdamW's learning rate for the next step, in every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);
bool all_finite(const std::vector<torch::Tensor>& tensors);

// After an optimizer step of `accum` loader batches, the last at `last`, of `global_batch`
// samples each (all ranks): images seen, and the data position of the next batch, carried into
// the next epoch after the epoch's last batch.
void advance_data_position(TrainingState& state, const data::LoaderPosition& last, int64_t global_batch,
                           int64_t accum, int64_t batches_per_epoch);

// Collective, one tiny all-reduce per step: true on every rank when any rank got SIGTERM/SIGUSR1
// (trainer/stop_signal.h), so every rank stops and checkpoints at the same step.
bool stop_requested_on_any_rank(Communicator& comm);

// Test hooks (tests/reliability_tests.py): DIFFTRAIN_TEST_NONFINITE_STEPS="5,6,7" or "5@1,6@1"
// makes the loss NaN in the 5th, 6th, 7th optimizer step this process runs (on every rank,
// or only on the rank after '@'); DIFFTRAIN_TEST_NONFINITE_WEIGHTS="10" makes one weight
// infinite after the 10th step's update. Counted per process, so a rolled-back run does not
// meet the same injected step again. The steps named in `variable` for this rank.
std::set<int64_t> injected_steps(const char* variable, int rank);

// One JSON object per line (run.dir/metrics.jsonl).
void append_jsonl(const std::filesystem::path& path, const nlohmann::json& line);

}  // namespace difftrain
