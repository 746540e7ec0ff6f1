// LayerNorm (Ba et al. 2016) of a bf16 activation in one pass, bf16 out (issue 12): the transformer
// blocks' norms under bf16 autocast. Eager, norm_fp32 (model/norm_fp32.h) casts x to float32, runs
// layer_norm, keeps its float32 input for the backward and casts the output back to bf16; its backward
// casts again each way. Here the statistics and the affine map are float32 in registers, x is read as
// bf16, the output rounded to bf16 once (the value norm_fp32 returns, to float rounding), and the backward
// recomputes x̂ from the bf16 input and the saved per-row mean and 1/σ, writing dx in bf16.
#pragma once

#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

namespace difftrain::model {

// x (..., C) bfloat16 on the CPU, weight and bias (C) float32: LayerNorm over the last dimension,
// (..., C) bfloat16, differentiable in x, weight and bias.
torch::Tensor fused_layer_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                               double eps);

// norm_fp32(norm, x): the fused kernel where x is bfloat16 on the CPU, the norm is affine over the last
// dimension and the fused norms are on (DIFFTRAIN_FUSED_NORM, model/group_norm_silu.h), else the eager ops
// (float32 training and sampling stay bit for bit as they were).
torch::Tensor layer_norm_fp32(torch::nn::LayerNormImpl& norm, const torch::Tensor& x);

}  // namespace difftrain::model
