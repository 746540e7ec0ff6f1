// Multi-head attention used by the text encoder and the UNet: self-attention
// over image positions and cross-attention from image positions to text tokens.
// Written out (not nn::MultiheadAttention) so the masking rule is explicit and
// the same code path works under autocast and TorchScript export.
// Also the GEGLU feed-forward of the UNet's transformer blocks (as in Stable Diffusion).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

namespace difftrain::model {

// softmax(q k^T / sqrt(d)) v  (Vaswani et al. 2017, eq. 1).
// q: (B, heads, Nq, d), k/v: (B, heads, Nk, d), key_valid: (B, Nk) bool or undefined.
// Keys with key_valid false get zero weight (-inf score); a batch row with no valid
// key attends to nothing and yields zeros (finite values and gradients, never NaN).
torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& key_valid);

struct MultiHeadAttentionImpl : torch::nn::Module {
  // query_dim: width of the sequence that asks; context_dim: width of the one attended to.
  MultiHeadAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads);
  // x: (B, Nq, query_dim), context: (B, Nk, context_dim), key_valid: (B, Nk) bool or undefined
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, const torch::Tensor& key_valid);

  int64_t heads;
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
};
TORCH_MODULE(MultiHeadAttention);

// Position-wise feed-forward with a GELU-gated linear unit, GEGLU (Shazeer 2020,
// "GLU Variants Improve Transformer", eq. 6): FFN(x) = (GELU(x W) * (x V)) W2, inner
// width mult * dim. W and V are one Linear(dim, 2 * inner) whose first half is the
// value x V and second half the gate x W (LDM's / diffusers' GEGLU layout, so SD
// weights map one to one); GELU is the exact (erf) one.
struct GegluFeedForwardImpl : torch::nn::Module {
  GegluFeedForwardImpl(int64_t dim, int64_t mult);
  torch::Tensor forward(const torch::Tensor& x);  // (B, N, dim) -> (B, N, dim)

  torch::nn::Linear proj{nullptr};  // dim -> 2 * inner: (value, gate)
  torch::nn::Linear out{nullptr};   // inner -> dim
};
TORCH_MODULE(GegluFeedForward);

}  // namespace difftrain::model
