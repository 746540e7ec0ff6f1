// Text-conditioned UNet (Ho et al. 2020 architecture with the improvements of
// Nichol & Dhariwal 2021 and the cross-attention of Rombach et al. 2022):
//   sinusoidal timestep embedding + pooled caption -> per-block scale/shift,
//   residual blocks, self-attention and cross-attention to the caption tokens
//   at the configured resolutions.
// Options (off by default) give it the shape of the LDM / Stable Diffusion UNet:
// transformer feed-forward, attention projections, additive time embedding,
// attention in the middle block (configs/sd15.yaml, docs/CONFIG.md).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/attention.h"
#include "model/text_encoder.h"

namespace difftrain::model {

// Where the UNet's text conditioning comes from: its own text encoder, trained
// jointly on caption tokens, or context vectors computed beforehand by a frozen
// encoder (`difftrain encode-text`, docs/CONDITIONING.md).
enum class ConditioningSource { kBuiltin, kPrecomputed };

// What the UNet is conditioned on: cross-attention keys/values and a pooled
// vector added (projected) to the timestep embedding, as in SDXL.
struct Conditioning {
  torch::Tensor context;  // (B, L, D) float
  torch::Tensor mask;     // (B, L) bool, true = attend; a row with none attends to nothing
  torch::Tensor pooled;   // (B, D') float, or undefined when the model has no pooled input
};

struct UNetOptions {
  int64_t image_channels = 3;
  int64_t image_size = 32;
  int64_t base_channels = 32;
  std::vector<int64_t> channel_mults = {1, 2, 2};
  int64_t num_res_blocks = 1;
  std::vector<int64_t> attention_resolutions = {16, 8};
  int64_t attention_heads = 4;
  int64_t norm_groups = 8;
  double dropout = 0.0;
  // Recompute each block's activations in backward instead of keeping them
  // (model/activation_checkpoint.h); only while training with grad mode on.
  bool checkpoint_activations = false;
  TextEncoderOptions text;  // kBuiltin only
  ConditioningSource conditioning = ConditioningSource::kBuiltin;
  int64_t context_dim = 0;  // kPrecomputed: D of the context vectors
  int64_t pooled_dim = 0;   // kPrecomputed: D' of the pooled vector, 0 = none
  // The shape of published UNets (Rombach et al. 2022's SpatialTransformer and ResBlock, as in
  // Stable Diffusion). The defaults build the UNet above unchanged: same parameters, same order,
  // same initialisation.
  int64_t transformer_ff_mult = 0;     // > 0: a GEGLU feed-forward of inner width mult x C after cross-attention
  bool attention_projections = false;  // 1x1 conv proj_in before and zero-initialised proj_out after the attention
  bool scale_shift_norm = true;        // false: the time embedding is added before norm2 (DDPM, SD), not scale/shift
  bool middle_attention = false;       // attention in the middle block even if its resolution is not listed
};

// Transformer-style sinusoidal embedding of the timestep (Vaswani et al. 2017, sec. 3.5).
// t: (B) -> (B, dim)
torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim);

struct ResBlockImpl : torch::nn::Module {
  ResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t embedding_dim, int64_t groups, double dropout,
               bool scale_shift_norm = true);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& embedding);  // x: (B, Cin, H, W), emb: (B, E)
  bool scale_shift_norm;
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, skip{nullptr};
  // E -> (scale, shift) of norm2, as in guided-diffusion; without scale_shift_norm E -> Cout, added before norm2.
  torch::nn::Linear embedding_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ResBlock);

// Self-attention over the H*W positions, then cross-attention to the caption; optionally
// (ff_mult > 0) a GEGLU feed-forward, and (projections) 1x1 convolutions in and out: with both,
// LDM's SpatialTransformer with one BasicTransformerBlock (Rombach et al. 2022, appendix; SD's
// Transformer2DModel), with `norm` GroupNorm eps 1e-5 where LDM has 1e-6.
struct SpatialAttentionImpl : torch::nn::Module {
  SpatialAttentionImpl(int64_t channels, int64_t heads, int64_t context_dim, int64_t groups, int64_t ff_mult = 0,
                       bool projections = false);
  // x: (B, C, H, W), context: (B, L, D), mask: (B, L) bool
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, const torch::Tensor& mask);
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in{nullptr}, proj_out{nullptr};  // null without projections
  torch::nn::LayerNorm norm_self{nullptr}, norm_cross{nullptr}, norm_ff{nullptr};  // norm_ff null without ff
  MultiHeadAttention self_attention{nullptr}, cross_attention{nullptr};
  GegluFeedForward ff{nullptr};  // null when ff_mult is 0
};
TORCH_MODULE(SpatialAttention);

// One resolution step: a residual block, optionally followed by attention.
struct UNetBlockImpl : torch::nn::Module {
  UNetBlockImpl(ResBlock res, SpatialAttention attention);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& embedding, const torch::Tensor& context,
                        const torch::Tensor& mask);
  ResBlock res{nullptr};
  SpatialAttention attention{nullptr};  // null when this resolution has none
};
TORCH_MODULE(UNetBlock);

struct UNetImpl : torch::nn::Module {
  explicit UNetImpl(UNetOptions options);
  // x_t: (B, C, H, W); t: (B) int64 in [0, T); tokens: (B, L) int64 (all padding = null condition).
  // Returns the network output (B, C, H, W): eps or v depending on the objective it was trained with.
  // Builtin conditioning only: the built-in text encoder's output is the Conditioning.
  torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& tokens);
  // Any conditioning; for kPrecomputed, context is (B, L, context_dim) and pooled (B, pooled_dim)
  // when pooled_dim > 0 (else it must be undefined).
  torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& t, const Conditioning& condition);
  // The built-in text encoder's Conditioning of (B, L) int64 tokens (kBuiltin only).
  Conditioning encode_tokens(const torch::Tensor& tokens);

  UNetOptions options;
  TextEncoder text_encoder{nullptr};  // null with kPrecomputed
  // text_to_embedding projects the pooled vector; null with kPrecomputed and pooled_dim 0.
  torch::nn::Linear time_fc1{nullptr}, time_fc2{nullptr}, text_to_embedding{nullptr};
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
  torch::nn::ModuleList down_blocks, downsamplers, middle_blocks, up_blocks, upsamplers;
};
TORCH_MODULE(UNet);

}  // namespace difftrain::model
