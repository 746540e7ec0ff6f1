// Text encoder over byte-level tokens (model/tokenizer.h), trained jointly with
// the UNet. A learned summary token is prepended and never masked: its output
// is the pooled caption embedding, and for the empty caption (all padding) it
// is the only key cross-attention sees — the learned null condition.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/attention.h"

namespace difftrain::model {

struct TextEncoderOptions {
  int64_t max_tokens = 32;
  int64_t width = 64;
  int64_t layers = 2;
  int64_t heads = 4;
};

struct EncodedText {
  torch::Tensor tokens;  // (B, L + 1, width): summary token, then one per input token
  torch::Tensor valid;   // (B, L + 1) bool: false at padding
  torch::Tensor pooled;  // (B, width): the summary token's output
};

// Pre-norm transformer layer (Xiong et al. 2020): x + attn(ln(x)), x + mlp(ln(x)).
struct TransformerLayerImpl : torch::nn::Module {
  TransformerLayerImpl(int64_t width, int64_t heads);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& valid);
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  MultiHeadAttention attention{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(TransformerLayer);

struct TextEncoderImpl : torch::nn::Module {
  explicit TextEncoderImpl(TextEncoderOptions options);
  EncodedText forward(const torch::Tensor& token_ids);  // token_ids: (B, L) int64

  TextEncoderOptions options;
  torch::nn::Embedding token_embedding{nullptr};
  torch::Tensor position_embedding;  // (L + 1, width)
  torch::Tensor summary_token;       // (width)
  torch::nn::ModuleList layers;
  torch::nn::LayerNorm final_norm{nullptr};
};
TORCH_MODULE(TextEncoder);

}  // namespace difftrain::model
