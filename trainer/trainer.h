// The training loop: shard -> loader -> model -> loss -> all-reduce ->
// optimizer -> EMA -> checkpoint / metrics (docs/ARCHITECTURE.md).
#pragma once

#include <functional>

#include "model/unet.h"
#include "trainer/config.h"

namespace difftrain {

class MpiSession;
class Communicator;

// Work the trainer runs periodically but does not own (it lives in eval/, which
// depends on the trainer). fid: collective; returns the FID of the EMA model.
struct TrainingHooks {
  std::function<double(model::UNet& ema, Communicator& comm)> fid;
  // Rank 0 only: validation grid of eval.prompts every eval.prompts_every steps and at the end.
  std::function<void(model::UNet& ema, int64_t step)> validation;
};

// Trains until config.train.max_steps, resuming from the newest complete
// checkpoint under config.run.dir if there is one. Collective: every rank calls it.
void train(const Config& config, MpiSession& session, const TrainingHooks& hooks = {});

}  // namespace difftrain
