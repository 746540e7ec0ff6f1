// Normalisation layers run in float32 whatever the autocast dtype, and return
// the input's dtype (guided-diffusion's GroupNorm32). Statistics over many
// elements lose too much in bf16/fp16, and LibTorch 1.13's CPU autocast cannot
// run group_norm/layer_norm on a bf16 input with float32 weights at all.
#pragma once

#include <torch/types.h>

namespace difftrain::model {

template <class Norm>
torch::Tensor norm_fp32(Norm& norm, const torch::Tensor& x) {
  return norm(x.to(torch::kFloat32)).to(x.scalar_type());
}

}  // namespace difftrain::model
