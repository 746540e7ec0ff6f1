// GroupNorm, an optional per-image scale/shift and SiLU in one pass over the activations
// (issue 12: a fusion eager PyTorch cannot do on CPU):
//   y = silu((GroupNorm(x) (1 + scale) + shift)),  GroupNorm(x) = (x - mean_g) rstd_g gamma_c + beta_c
// (Wu & He 2018; the scale/shift is adaptive group normalisation, Dhariwal & Nichol 2021, sec. 3).
// x is read in its own dtype (bf16 under autocast), statistics and arithmetic are float32, and the output
// is written in x's dtype: for bf16 exactly the value the next convolution's cast made of the eager
// float32 result (one round-to-nearest-even of the same float32 value, to float rounding of the sums), in
// half the bytes; the upstream gradient is read in that dtype too (the convolution's bf16 input gradient). The backward recomputes the normalised values from x and the saved
// per-group statistics instead of keeping float32 copies, and writes dx in x's dtype.
#pragma once

#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

namespace difftrain::model {

// x (N, C, H, W) float32 or bfloat16 on the CPU; weight, bias (C) float32; scale, shift (N, C) float32 or
// undefined (no scale/shift). Returns (N, C, H, W) in x's dtype, differentiable in every tensor argument.
torch::Tensor fused_group_norm_silu(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                                    const torch::Tensor& bias, double eps, const torch::Tensor& scale = {},
                                    const torch::Tensor& shift = {});

// silu(norm(x) (1 + scale) + shift) computed in float32 (scale, shift (N, C, 1, 1) or undefined): the fused
// kernel (bf16 out) when x is bfloat16 on the CPU (autocast) and the fusion is on, else the eager float32 ops
// it replaces (float32 out)
// (float32 training and sampling stay bit for bit as they were).
torch::Tensor group_norm_silu(torch::nn::GroupNormImpl& norm, const torch::Tensor& x, const torch::Tensor& scale = {},
                              const torch::Tensor& shift = {});

// The switch: on unless DIFFTRAIN_FUSED_NORM=0 (read once; another value than 0 or 1 is a std::runtime_error
// naming it); tests and benchmarks set it directly.
bool fused_group_norm_silu_enabled();
void set_fused_group_norm_silu_enabled(bool enabled);

}  // namespace difftrain::model
