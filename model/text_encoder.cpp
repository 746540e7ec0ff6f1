#include "model/text_encoder.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>

#include "model/layer_norm.h"
#include "model/norm_fp32.h"
#include "model/tokenizer.h"

namespace difftrain::model {

TransformerLayerImpl::TransformerLayerImpl(int64_t width, int64_t heads) {
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  attention = register_module("attention", MultiHeadAttention(width, width, heads));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  fc1 = register_module("fc1", torch::nn::Linear(width, 4 * width));
  fc2 = register_module("fc2", torch::nn::Linear(4 * width, width));
}

torch::Tensor TransformerLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& valid) {
  auto h = layer_norm_fp32(*norm1, x);
  auto y = x + attention(h, h, valid);
  return y + fc2(torch::gelu(fc1(layer_norm_fp32(*norm2, y))));
}

TextEncoderImpl::TextEncoderImpl(TextEncoderOptions opts) : options(opts) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(kVocabSize, opts.width));
  position_embedding =
      register_parameter("position_embedding", torch::randn({opts.max_tokens + 1, opts.width}) * 0.02);
  summary_token = register_parameter("summary_token", torch::randn({opts.width}) * 0.02);
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < opts.layers; ++i) layers->push_back(TransformerLayer(opts.width, opts.heads));
  final_norm = register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({opts.width})));
}

EncodedText TextEncoderImpl::forward(const torch::Tensor& token_ids) {
  TORCH_CHECK(token_ids.dim() == 2 && token_ids.size(1) == options.max_tokens, "text encoder expects tokens (B, ",
              options.max_tokens, "), got ", token_ids.sizes());
  // Shapes follow the inputs (expand_as, ones_like) so a traced export accepts any batch size.
  auto embedded = token_embedding(token_ids);                                     // (B, L, width)
  auto summary = summary_token.view({1, 1, -1}).expand_as(embedded.narrow(1, 0, 1));  // (B, 1, width)
  auto x = torch::cat({summary, embedded}, 1) + position_embedding.unsqueeze(0);  // (B, L + 1, width)
  auto first = token_ids.narrow(1, 0, 1);
  auto valid = torch::cat({torch::ones_like(first, first.options().dtype(torch::kBool)), token_ids != kPadToken}, 1);
  for (const auto& layer : *layers) x = layer->as<TransformerLayer>()->forward(x, valid);
  x = layer_norm_fp32(*final_norm, x);
  return {x, valid, x.select(1, 0)};
}

}  // namespace difftrain::model
