// The training loop: shard -> loader -> model -> loss -> all-reduce ->
// optimizer -> EMA -> checkpoint / metrics (docs/ARCHITECTURE.md).
#pragma once

#include "trainer/config.h"

namespace difftrain {

class MpiSession;

// Trains until config.train.max_steps, resuming from the newest complete
// checkpoint under config.run.dir if there is one. Collective: every rank calls it.
void train(const Config& config, MpiSession& session);

}  // namespace difftrain
