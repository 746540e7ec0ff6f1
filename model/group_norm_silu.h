// GroupNorm, an optional per-image scale/shift and SiLU in one pass over the activations
// (issue 12: a fusion eager PyTorch cannot do on CPU):
//   y = silu((GroupNorm(x) (1 + scale) + shift)),  GroupNorm(x) = (x - mean_g) rstd_g gamma_c + beta_c
// (Wu & He 2018; the scale/shift is adaptive group normalisation, Dhariwal & Nichol 2021, sec. 3).
// x is read in its own dtype (bf16 under autocast), statistics and output are float32, so the result
// equals the eager float32 norm followed by float32 SiLU (model/norm_fp32.h) to float rounding, and the
// next convolution's cast rounds once. The backward recomputes the normalised values from x and the saved
// per-group statistics instead of keeping float32 copies, and writes dx in x's dtype.
#pragma once

#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

namespace difftrain::model {

// x (N, C, H, W) float32 or bfloat16 on the CPU; weight, bias (C) float32; scale, shift (N, C) float32 or
// undefined (no scale/shift). Returns (N, C, H, W) float32, differentiable in every tensor argument.
torch::Tensor fused_group_norm_silu(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                                    const torch::Tensor& bias, double eps, const torch::Tensor& scale = {},
                                    const torch::Tensor& shift = {});

// silu(norm(x) (1 + scale) + shift) in float32 (scale, shift (N, C, 1, 1) or undefined): the fused kernel
// when x is bfloat16 on the CPU (autocast) and the fusion is on, else the eager float32 ops it replaces
// (float32 training and sampling stay bit for bit as they were).
torch::Tensor group_norm_silu(torch::nn::GroupNormImpl& norm, const torch::Tensor& x, const torch::Tensor& scale = {},
                              const torch::Tensor& shift = {});

// The switch: on unless DIFFTRAIN_FUSED_NORM=0 (read once; another value than 0 or 1 is a std::runtime_error
// naming it); tests and benchmarks set it directly.
bool fused_group_norm_silu_enabled();
void set_fused_group_norm_silu_enabled(bool enabled);

}  // namespace difftrain::model
