// `difftrain ema-reconstruct`: EDM2's post-hoc EMA (trainer/power_ema.h). From a run trained with
// train.ema_profiles, the EMA of any relative width sigma_rel at one of its checkpoints, built as
// the least-squares combination of the stored profiles (the snapshots under run.dir/ema-snapshots
// before the checkpoint's step, and the checkpoint's own profiles at it). Written as a copy of
// that checkpoint whose EMA (ema.pt) is the reconstruction, under <out>/checkpoints/step-N:
// `sample`, `export` and `eval sweep --checkpoint <out>` then use it like any other checkpoint.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace difftrain::cli {

struct EmaReconstructCommand {
  CLI::App* app = nullptr;
  std::string checkpoint;  // checkpoint directory, or a run directory (its newest verified checkpoint)
  double sigma_rel = 0;
  std::string out;
};

std::unique_ptr<EmaReconstructCommand> add_ema_reconstruct_command(CLI::App& app);

// In this process (no MPI); errors throw. Returns the exit code.
int run_ema_reconstruct_command(const EmaReconstructCommand& command);

}  // namespace difftrain::cli
