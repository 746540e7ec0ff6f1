// Multi-head attention used by the text encoder and the UNet: self-attention
// over image positions and cross-attention from image positions to text tokens.
// Written out (not nn::MultiheadAttention) so the masking rule is explicit and
// the same code path works under autocast and TorchScript export.
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

}  // namespace difftrain::model
