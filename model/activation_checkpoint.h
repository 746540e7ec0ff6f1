// Activation checkpointing: run a block without keeping its intermediate
// activations and recompute them in backward (Chen et al. 2016, "Training Deep
// Nets with Sublinear Memory Cost", arXiv:1604.06174). A LibTorch port of
// torch.utils.checkpoint with use_reentrant=True and preserve_rng_state=True:
//   checkpoint(fn, inputs) -> fn(inputs), keeping only `inputs` for backward.
#pragma once

#include <torch/types.h>

#include <functional>
#include <vector>

namespace difftrain::model {

using CheckpointedFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// Returns fn(inputs) and records one autograd node whose backward re-runs fn on
// detached copies of `inputs` (same RNG state, same autocast state), back-propagates
// the incoming gradient through it, so the parameters used by fn accumulate
// their .grad as usual (AccumulateGrad hooks fire), and returns the gradients of `inputs`.
// fn must be deterministic given its inputs, the RNG state and the autocast state;
// tensors fn needs without gradients may be captured by fn instead of passed.
// When grad mode is off or no input requires grad, this is fn(inputs).
torch::Tensor checkpoint(const CheckpointedFn& fn, const std::vector<torch::Tensor>& inputs);

}  // namespace difftrain::model
