// AdamW (Loshchilov & Hutter 2019, algorithm 2, decoupled weight decay) with the
// update of each parameter done in one pass over its memory, instead of LibTorch's
// eight tensor operations per parameter (each a dispatch and a pass over weights,
// gradient or moments). Same options, same per-parameter state (exp_avg, exp_avg_sq,
// step) and the same checkpoint format as torch::optim::AdamW, which it extends:
// a checkpoint written with either loads into the other. Values equal LibTorch's to
// float32 rounding (tests/test_fused_adamw.cpp).
//
// The fused pass covers dense float32 CPU parameters without amsgrad; any other
// parameter set (CUDA, other dtypes, amsgrad) takes torch::optim::AdamW::step, as
// does every step when DIFFTRAIN_FUSED_ADAMW=0 is set (the before/after benchmark).
// Measured in bench/bench_python_twin.py (docs/BENCHMARKS.md, issue 12).
#pragma once

#include <torch/optim/adamw.h>

namespace difftrain {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

// Whether FusedAdamW's one-pass update is on in this process (DIFFTRAIN_FUSED_ADAMW != "0").
bool fused_adamw_enabled();

}  // namespace difftrain
