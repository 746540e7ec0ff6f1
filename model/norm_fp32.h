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

// The float32 output itself, for a norm followed by elementwise work (scale/shift,
// SiLU) before a convolution: that work then runs in float32 and the convolution's
// autocast rounds once to bf16/fp16. Same values in float32 training; under bf16
// autocast more precise and faster, since LibTorch 1.13's CPU SiLU and its backward
// are 2.5-4x slower in bfloat16 than in float32 (issue 12, docs/BENCHMARKS.md).
template <class Norm>
torch::Tensor norm_in_fp32(Norm& norm, const torch::Tensor& x) {
  return norm(x.to(torch::kFloat32));
}

}  // namespace difftrain::model
