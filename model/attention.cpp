#include "model/attention.h"

#include "model/batched_matmul.h"

#include <torch/nn/functional/activation.h>

#include <cmath>
#include <limits>

namespace difftrain::model {

torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& key_valid) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  // Under bf16: the same function in one node, softmax fused with its casts (model/batched_matmul.h).
  if (fused_attention_applies(q, k, v)) return fused_attention(q, k, v, key_valid, scale);
  // (B, heads, Nq, Nk) in float32, the softmax's precision (from bf16 operands under autocast)
  auto scores = batched_matmul(q, k.transpose(-1, -2), scale, {torch::kFloat32});
  torch::Tensor has_key;  // (B, 1, 1, 1): the row has at least one key to attend to
  if (key_valid.defined()) {
    // Masked keys get -inf, so they get exactly zero weight. A row whose keys are
    // all masked attends to nothing: its output is zero. Its scores are left
    // unmasked for the softmax (so neither the output nor the gradient is NaN)
    // and its weights are then multiplied by 0; rows with a key are multiplied by 1.
    auto valid = key_valid.to(torch::kBool).unsqueeze(1).unsqueeze(1);  // (B, 1, 1, Nk)
    has_key = valid.any(-1, /*keepdim=*/true);
    scores = scores.masked_fill(valid.logical_not().logical_and(has_key), -std::numeric_limits<double>::infinity());
  }
  auto weights = torch::softmax(scores, -1);
  if (has_key.defined()) weights = weights * has_key.to(torch::kFloat32);
  weights = weights.to(v.scalar_type());
  // (B, heads, Nq, d), stored as (B, Nq, heads, d) where oneDNN computes it: the caller's
  // transpose(1, 2).flatten(2) is then a view.
  return batched_matmul(weights, v, 1.0, {std::nullopt, /*heads_interleaved=*/true});
}

MultiHeadAttentionImpl::MultiHeadAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads_)
    : heads(heads_) {
  to_q = register_module("to_q", torch::nn::Linear(torch::nn::LinearOptions(query_dim, query_dim).bias(false)));
  to_k = register_module("to_k", torch::nn::Linear(torch::nn::LinearOptions(context_dim, query_dim).bias(false)));
  to_v = register_module("to_v", torch::nn::Linear(torch::nn::LinearOptions(context_dim, query_dim).bias(false)));
  to_out = register_module("to_out", torch::nn::Linear(query_dim, query_dim));
}

torch::Tensor MultiHeadAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context,
                                              const torch::Tensor& key_valid) {
  const int64_t d = x.size(2) / heads;
  // No batch or sequence length is read into C++ integers, so a traced export
  // (model/torchscript_export.h) accepts any batch size.
  // (B, heads, N, d) views of the (B, N, heads·d) projections: oneDNN reads them in place
  // (model/batched_matmul). Elsewhere contiguous blocks: torch::matmul would copy them anyway.
  const bool in_place = onednn_matmul_enabled() && x.device().is_cpu();
  auto split = [&](const torch::Tensor& t) {
    auto heads_first = t.unflatten(2, {heads, d}).transpose(1, 2);
    return in_place ? heads_first : heads_first.contiguous();
  };
  auto out = scaled_dot_product_attention(split(to_q(x)), split(to_k(context)), split(to_v(context)), key_valid);
  return to_out(out.transpose(1, 2).flatten(2));  // (B, Nq, D)
}

GegluFeedForwardImpl::GegluFeedForwardImpl(int64_t dim, int64_t mult) {
  proj = register_module("proj", torch::nn::Linear(dim, 2 * mult * dim));
  out = register_module("out", torch::nn::Linear(mult * dim, dim));
}

torch::Tensor GegluFeedForwardImpl::forward(const torch::Tensor& x) {
  auto value_gate = proj(x).chunk(2, -1);  // (B, N, inner) each
  return out(value_gate[0] * torch::gelu(value_gate[1]));
}

}  // namespace difftrain::model
