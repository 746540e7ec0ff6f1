// The one optimizer loop of every trainer (the diffusion UNet, trainer/trainer.cpp; the
// autoencoder, trainer/autoencoder_trainer.cpp). A trainer sets up its model, optimizer,
// loader and resumed state, then hands the loop what differs: the loss of one loader
// batch, the extra means it logs, and what runs after a step (evaluation hooks).
// The loop does the rest, the same way for both:
//   micro-batches (train.grad_accum_steps) -> backward into the GradientReducer's buckets
//   -> fp16 loss-scale check -> non-finite guard (skip; after train.nonfinite_patience in a
//   row roll back to the newest verified checkpoint, or stop) -> clip -> AdamW with the
//   warm-up + cosine learning rate -> EMA -> data position -> Prometheus step metrics ->
//   every train.log_every steps the all-reduced means on the console and in metrics.jsonl
//   -> the stop flag -> checkpoints (never of non-finite weights) -> stop or finish.
// Threading: the caller's (training) thread only.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace difftrain {

class Communicator;
class GradientReducer;
class DynamicLossScaler;
class Ema;
class PowerEma;
namespace monitoring {
class TrainingMetrics;
}

// What the loop trains and updates; all owned by the trainer.
struct LoopModel {
  torch::nn::Module& net;
  torch::nn::Module& ema_net;
  torch::optim::Optimizer& optimizer;
  GradientReducer& reducer;  // built over net's parameters; gradients live in its buckets
  DynamicLossScaler& scaler;
  Ema& ema;
  // train.ema_profiles (EDM2, trainer/power_ema.h): updated after the EMA, saved in every
  // checkpoint, snapshotted every train.ema_snapshot_every steps (trainer/ema_snapshots.h).
  PowerEma* power_ema = nullptr;
  std::vector<torch::nn::Module*> ema_profiles = {};
};

// A mean the trainer logs besides the loss, e.g. the autoencoder's PSNR: sum / count over
// the logging window, all ranks together.
struct LoggedMean {
  std::string key;     // metrics.jsonl key, e.g. "psnr_db"
  std::string format;  // console, printf of the mean, e.g. "psnr %.2f dB"
};

struct LoopHooks {
  // The loss of one loader batch: already divided by train.grad_accum_steps (the step's
  // loss is the mean over its micro-batches), not yet scaled. `extras` has one (sum, count)
  // pair per LoggedMean to add this batch's values to.
  std::function<torch::Tensor(const data::Batch& batch, std::vector<std::pair<double, double>>& extras)> loss;
  std::vector<LoggedMean> logged;
  // After each completed step, on every rank (collectives allowed); returns the seconds it
  // took, which do not count as training time. Optional.
  std::function<double(int64_t step)> after_step;
  std::string done_message = "training done";  // logged at the end: "<message>: step S in <run.dir>"
};

// Runs from state.step to train.max_steps (or a stop signal), checkpointing config_yaml with
// every checkpoint. Collective: every rank calls it. Throws on divergence with
// train.on_divergence=stop (or rollbacks exhausted), with the step in the message.
void run_training_loop(const Config& config, Communicator& comm, const std::string& config_yaml, LoopModel model,
                       data::Loader& loader, TrainingState& state, monitoring::TrainingMetrics* metrics,
                       const LoopHooks& hooks);

}  // namespace difftrain
