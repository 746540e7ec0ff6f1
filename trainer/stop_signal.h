// Preemption (Slurm sends SIGTERM, or SIGUSR1 with --signal=USR1@N): the
// handler only records the signal; the training loop then makes every rank
// agree on one step (an all-reduce of the flag each step), writes a checkpoint
// there and returns normally, so the job exits 0 and resumes losslessly.
#pragma once

namespace difftrain {

void install_stop_signal_handlers();  // SIGTERM, SIGUSR1
int pending_stop_signal();            // 0, or the signal received

}  // namespace difftrain
