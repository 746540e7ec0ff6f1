// 3×3, stride-1 convolutions through oneDNN's Winograd algorithm, F(4×4, 3×3)
// (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"), on CPU float32.
//
// Why: LibTorch 1.13 runs every CPU convolution with oneDNN's direct algorithm, which on
// this machine already reaches the core's float32 peak (≈ 220 GFLOP/s at 64 and 128
// channels), so at the 32 px, base-64 model the convolutions are 63 % of a training step
// and no amount of work around them moves it. Winograd F(4×4, 3×3) does the same
// convolution with 4× fewer multiplications in its transformed domain: oneDNN's
// jit_wino_4x3 kernels (forward, backward by data, backward by weights — the same
// libdnnl.so.2 LibTorch links) ran these shapes 1.3–2.2× faster than direct
// (docs/BENCHMARKS.md). cuDNN picks Winograd for float32 training on GPUs the same way;
// PyTorch offers no way to ask for it on CPU.
//
// Results are equal to the direct convolution to float32 rounding of a different summation
// (relative differences ~1e-6, checked against torch::conv2d in tests/test_winograd_conv.cpp),
// and deterministic run to run, so resumes stay bit-identical.
//
// Taken only where it computes the same function: CPU float32 (not under autocast: bf16
// convolutions stay LibTorch's), a 3×3 kernel with stride 1, padding 1, no dilation or
// groups, not while tracing an export (which records torch::conv2d), built with oneDNN,
// and where oneDNN has a Winograd kernel for the shape (channels a multiple of 16; else
// torch::conv2d). DIFFTRAIN_CONV=direct in the environment turns it off (the before/after
// benchmark, bench/bench_python_twin.py, and bit-exact comparisons with the eager twin).
#pragma once

#include <torch/nn/modules/conv.h>

namespace difftrain::model {

// conv(x), through Winograd where the conditions above hold, else conv.forward(x).
torch::Tensor conv2d_3x3(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// Whether Winograd is on in this process (built with oneDNN, DIFFTRAIN_CONV is not "direct").
bool winograd_conv_enabled();

}  // namespace difftrain::model
