// The UNet's convolutions through oneDNN directly (the same libdnnl.so.2 LibTorch 1.13
// links), on CPU, in two modes:
//
// 1. float32: Winograd F(4×4, 3×3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional
//    Neural Networks"). LibTorch runs every CPU convolution with oneDNN's direct algorithm,
//    which on this machine already reaches the core's float32 peak (≈ 220 GFLOP/s), so at
//    the 32 px, base-64 model the convolutions were 63 % of a training step. Winograd does
//    the same convolution with 4× fewer multiplications in its transformed domain: oneDNN's
//    jit_wino_4x3 kernels (forward, backward by data, backward by weights) ran these shapes
//    1.3–2.2× faster than direct (docs/BENCHMARKS.md). cuDNN picks Winograd for float32
//    training on GPUs the same way; PyTorch offers no way to ask for it on CPU.
//    Results equal the direct convolution to float32 rounding of a different summation
//    (relative differences ~1e-6).
//
// 2. bfloat16 autocast: the same bf16 direct kernels LibTorch's autocast reaches, with the
//    passes around them fused. Eager autocast casts the input to bf16 (one pass), then
//    ATen reorders it into oneDNN's blocked layout (a second), casts and reorders the
//    weights, and in backward reorders the upstream gradient twice (once per backward
//    kernel), reorders the saved input a second time for the backward by weights, and
//    casts the bf16 weight gradient to float32 (a third tensor pass). Here one oneDNN
//    reorder converts and blocks the input, the blocked bf16 input is what backward keeps,
//    the upstream gradient is blocked once for both backward kernels, and the weight and
//    bias gradients are accumulated and written in float32 directly (more precise than
//    eager's bf16 weight gradient). In the 32 px bf16 profile these passes were about
//    100 ms of a 950 ms step (oneDNN verbose: 238 activation reorders per step).
//    The output is bf16, as autocast's; the input's gradient has the input's dtype.
//    This mode takes every convolution of the UNet: 3×3 at stride 1 and 2 (the downsamplers),
//    and 1×1 (the residual blocks' skip projections, the transformer blocks' proj_in/out).
//
// Results are deterministic run to run, so resumes stay bit-identical; both modes are checked
// against torch::conv2d (an independent path through ATen) in tests/test_onednn_conv.cpp.
//
// Taken only where it computes the same function: CPU, float32 weights, a square 1×1 or 3×3
// kernel with equal strides and zero padding, no dilation or groups (float32: only 3×3 at
// stride 1, padding 1, Winograd's shape), not while tracing an export (which records
// torch::conv2d), built with oneDNN, and where oneDNN has a JIT kernel for the shape; under
// autocast only for bf16 (float16 stays LibTorch's). Elsewhere it is conv.forward(x).
// DIFFTRAIN_CONV=libtorch in the environment turns both modes off (the before/after
// benchmark, bench/bench_python_twin.py, and bit-exact comparisons with the eager twin).
#pragma once

#include <torch/nn/modules/conv.h>

namespace difftrain::model {

// conv(x), through oneDNN where the conditions above hold, else conv.forward(x).
torch::Tensor convolve(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// Whether the oneDNN convolutions are on in this process (built with oneDNN, DIFFTRAIN_CONV is not "libtorch").
bool onednn_conv_enabled();

}  // namespace difftrain::model
