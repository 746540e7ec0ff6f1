#include "model/attention.h"

#include <cmath>

namespace difftrain::model {

torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& key_valid) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-1, -2)) * scale;  // (B, heads, Nq, Nk)
  if (key_valid.defined()) {
    // Masked keys get a large negative score rather than -inf, so a fully
    // masked row cannot turn into NaN (the encoder never produces one anyway).
    auto invalid = key_valid.logical_not().unsqueeze(1).unsqueeze(1);  // (B, 1, 1, Nk)
    scores = scores.masked_fill(invalid, -1e4);
  }
  auto weights = torch::softmax(scores.to(torch::kFloat32), -1).to(v.scalar_type());
  return torch::matmul(weights, v);  // (B, heads, Nq, d)
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
  // Contiguous (B, heads, N, d) blocks: CPU batched matmul is far slower on strided views.
  auto split = [&](const torch::Tensor& t) { return t.unflatten(2, {heads, d}).transpose(1, 2).contiguous(); };
  auto out = scaled_dot_product_attention(split(to_q(x)), split(to_k(context)), split(to_v(context)), key_valid);
  return to_out(out.transpose(1, 2).flatten(2));  // (B, Nq, D)
}

}  // namespace difftrain::model
