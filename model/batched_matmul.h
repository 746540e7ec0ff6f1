// Batched matrix product for attention, a @ b over the last two dimensions, with
// oneDNN's batched matmul primitive on CPU (float32 and bfloat16).
//
// Why: LibTorch 1.13's CPU float32 bmm calls one OpenBLAS sgemm per batch entry
// (one ATen dispatch each), which at attention's shapes — (B·heads) × (64×16)·(16×64)
// — runs at a quarter of the core's rate; oneDNN (the same libdnnl.so that LibTorch
// uses for convolutions) does the whole batch in one primitive, 3.9× faster at that
// shape and 10× at (16×16)·(16×16) on this machine (docs/BENCHMARKS.md, issue 12).
// And oneDNN reads and writes strided operands in place (any batch strides; rows or
// columns packed), so attention's heads need no copies: q, k, v are read as
// (B, heads, N, d) views of the (B, N, heads·d) projections, the output is written
// straight into (B, N, heads·d) order (MatmulOutput::heads_interleaved), and the
// gradients come back in their operands' layouts. Eager attention copies each of
// these (.contiguous() on q, k, v; a copy after the output transpose; and reshapes
// of the gradients in backward). Under bf16 the scores can be produced in float32
// directly (MatmulOutput::dtype), the softmax's input, without a bf16 rounding and a cast.
//
// The oneDNN path is taken only where it computes the same function: CPU, float32 or
// bfloat16 operands of one type (under bf16 autocast float32 operands are cast to
// bfloat16 first, as torch::matmul's autocast does), equal leading dimensions (no
// broadcasting), not while tracing an export (a trace must record torch::matmul so
// the TorchScript file loads anywhere), and built with oneDNN (DIFFTRAIN_HAVE_ONEDNN).
// Elsewhere this is torch::matmul (then scaled and cast). The results equal
// torch::matmul's to summation order; gradients flow through the same kernel
// (dA = dC·Bᵀ, dB = Aᵀ·dC with transposed views, no copies).
// DIFFTRAIN_ONEDNN_MATMUL=0 in the environment turns the oneDNN path off (for the
// before/after benchmark, bench/bench_python_twin.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace difftrain::model {

struct MatmulOutput {
  // The result's dtype: the operands' (after autocast) by default; float32 from bfloat16 operands is allowed.
  std::optional<at::ScalarType> dtype;
  // For 4-D (B, heads, M, N) results: stored as (B, M, heads, N), so result.transpose(1, 2).flatten(2)
  // is a view. Only the layout differs: the values and the shape are the same.
  bool heads_interleaved = false;
};

// a: (..., M, K), b: (..., K, N) with equal leading dimensions -> scale · (a @ b), (..., M, N).
// The scale is applied to each float32 accumulator inside the oneDNN primitive (its output scale), the
// same value torch::matmul(a, b) * scale gives in float32 without a second pass over the product;
// attention's 1/sqrt(d) on its (B, heads, Nq, Nk) scores is the case that matters.
at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b, double scale = 1.0, MatmulOutput output = {});

// Attention's core under bf16 in one autograd node (issue 12): softmax(scale · q kᵀ over the valid keys) v
// with the float32 scores as scratch, the bf16 weights the only (B, heads, Nq, Nk) tensor kept for the
// backward, and softmax's casts fused into it (model/attention_softmax.h). q (B, heads, Nq, d), k and v
// (B, heads, Nk, d) bfloat16 (views of the projections are read in place); key_valid (B, Nk) or undefined.
// Returns (B, heads, Nq, d) bf16 stored heads-interleaved, as MatmulOutput::heads_interleaved. An image whose
// keys are all masked attends to nothing (zero output), as the eager composition in model/attention.cpp.
// Only where fused_attention_applies(q, k, v): CPU bf16 operands on the oneDNN path, not tracing, and the
// fusion on (DIFFTRAIN_FUSED_ATTENTION, default 1; 0 = the eager composition, for the benchmark).
// Float32 attention never takes it, so float32 training and sampling are unchanged bit for bit.
bool fused_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_valid,
                           double scale);
// The switch (read from the environment once; another value than 0 or 1 is a std::runtime_error naming it).
bool fused_attention_enabled();
void set_fused_attention_enabled(bool enabled);

// Whether batched_matmul would use oneDNN for CPU operands in this process
// (built with it and not turned off by DIFFTRAIN_ONEDNN_MATMUL=0).
bool onednn_matmul_enabled();

}  // namespace difftrain::model
