// Batched matrix product for attention, a @ b over the last two dimensions, with
// oneDNN's batched matmul primitive on CPU float32.
//
// Why: LibTorch 1.13's CPU float32 bmm calls one OpenBLAS sgemm per batch entry
// (one ATen dispatch each), which at attention's shapes — (B·heads) × (64×16)·(16×64)
// — runs at a quarter of the core's rate; oneDNN (the same libdnnl.so that LibTorch
// uses for convolutions) does the whole batch in one primitive, 3.9× faster at that
// shape and 10× at (16×16)·(16×16) on this machine (docs/BENCHMARKS.md, issue 12).
// bfloat16 already goes to oneDNN inside LibTorch and is left to torch::matmul.
//
// The oneDNN path is taken only where it computes the same function: CPU, float32,
// no autocast (which would cast the operands), not while tracing an export (a trace
// must record torch::matmul so the TorchScript file loads anywhere), and built with
// oneDNN (DIFFTRAIN_HAVE_ONEDNN). Elsewhere this is torch::matmul. The results equal
// torch::matmul's to float32 summation order; gradients flow through the same kernel
// (dA = dC·Bᵀ, dB = Aᵀ·dC with transposed views, no copies).
// DIFFTRAIN_ONEDNN_MATMUL=0 in the environment turns the oneDNN path off (for the
// before/after benchmark, bench/bench_python_twin.py).
#pragma once

#include <ATen/core/Tensor.h>

namespace difftrain::model {

// a: (..., M, K), b: (..., K, N) with equal leading dimensions -> scale · (a @ b), (..., M, N).
// The scale is applied to each float32 result inside the oneDNN primitive (its output scale), the
// same value torch::matmul(a, b) * scale gives without a second pass over the product; attention's
// 1/sqrt(d) on its (B, heads, Nq, Nk) scores is the case that matters.
at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b, double scale = 1.0);

// Whether batched_matmul would use oneDNN for float32 CPU operands in this process
// (built with it and not turned off by DIFFTRAIN_ONEDNN_MATMUL=0).
bool onednn_matmul_enabled();

}  // namespace difftrain::model
