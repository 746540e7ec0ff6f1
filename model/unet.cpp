#include "model/unet.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/upsampling.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>

#include "model/activation_checkpoint.h"
#include "model/group_norm_silu.h"
#include "model/layer_norm.h"
#include "model/norm_fp32.h"
#include "model/onednn_conv.h"

namespace difftrain::model {
namespace F = torch::nn::functional;

torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  auto freqs = torch::exp(-std::log(10000.0) * torch::arange(half, t.options().dtype(torch::kFloat32)) / half);
  auto args = t.to(torch::kFloat32).unsqueeze(1) * freqs.unsqueeze(0);  // (B, half)
  return torch::cat({torch::cos(args), torch::sin(args)}, 1);
}

namespace {
torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}
// Output layers of residual branches start at zero, so every block starts as
// the identity (Goyal et al. 2017; guided-diffusion's zero_module).
template <class M>
M zero_init(M module) {
  torch::NoGradGuard guard;
  for (auto& p : module->parameters()) p.zero_();
  return module;
}
}  // namespace

ResBlockImpl::ResBlockImpl(int64_t in, int64_t out, int64_t embedding_dim, int64_t groups, double p,
                           bool scale_shift_norm_)
    : scale_shift_norm(scale_shift_norm_) {
  norm1 = register_module("norm1", torch::nn::GroupNorm(groups, in));
  conv1 = register_module("conv1", conv3x3(in, out));
  embedding_proj =
      register_module("embedding_proj", torch::nn::Linear(embedding_dim, scale_shift_norm ? 2 * out : out));
  norm2 = register_module("norm2", torch::nn::GroupNorm(groups, out));
  dropout = register_module("dropout", torch::nn::Dropout(p));
  conv2 = register_module("conv2", zero_init(conv3x3(out, out)));
  if (in != out) skip = register_module("skip", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1)));
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& embedding) {
  auto h = convolve(*conv1, group_norm_silu(*norm1, x));
  auto projected = embedding_proj(torch::silu(embedding)).unsqueeze(-1).unsqueeze(-1);
  if (scale_shift_norm) {
    // Adaptive group normalisation (Dhariwal & Nichol 2021, sec. 3): GroupNorm(h) (1 + scale) + shift.
    auto scale_shift = projected.chunk(2, 1);
    h = group_norm_silu(*norm2, h, scale_shift[0], scale_shift[1]);
  } else {
    // The embedding added to the features (Ho et al. 2020, appendix B; SD's ResnetBlock2D).
    h = group_norm_silu(*norm2, h + projected);
  }
  h = convolve(*conv2, dropout(h));
  return (skip ? convolve(*skip, x) : x) + h;
}

SpatialAttentionImpl::SpatialAttentionImpl(int64_t channels, int64_t heads, int64_t context_dim, int64_t groups,
                                           int64_t ff_mult, bool projections) {
  auto layer_norm = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({channels})); };
  auto conv1x1 = [&] { return torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 1)); };
  // Registration order is LDM's (norm, proj_in, the transformer block, proj_out); without the
  // options it is the order of the model before they existed.
  norm = register_module("norm", torch::nn::GroupNorm(groups, channels));
  if (projections) proj_in = register_module("proj_in", conv1x1());
  norm_self = register_module("norm_self", layer_norm());
  self_attention = register_module("self_attention", MultiHeadAttention(channels, channels, heads));
  norm_cross = register_module("norm_cross", layer_norm());
  cross_attention = register_module("cross_attention", MultiHeadAttention(channels, context_dim, heads));
  if (ff_mult > 0) {
    norm_ff = register_module("norm_ff", layer_norm());
    ff = register_module("ff", GegluFeedForward(channels, ff_mult));
  }
  // Output layers start at zero: with projections proj_out alone (as LDM), so the block starts as
  // the identity; without, the output layer of each attention and feed-forward sublayer, as before.
  if (projections) {
    proj_out = register_module("proj_out", zero_init(conv1x1()));
  } else {
    zero_init(self_attention->to_out);
    zero_init(cross_attention->to_out);
    if (ff) zero_init(ff->out);
  }
}

torch::Tensor SpatialAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context,
                                            const torch::Tensor& mask) {
  auto h = norm_fp32(norm, x);
  if (proj_in) h = convolve(*proj_in, h);
  // (B, HW, C) with each token's channels contiguous: the residual adds and the norms below then run
  // at streaming speed (an add with one transposed operand is 8x slower on this CPU, issue 12).
  h = h.flatten(2).transpose(1, 2).contiguous();
  auto s = layer_norm_fp32(*norm_self, h);
  h = h + self_attention(s, s, torch::Tensor());
  h = h + cross_attention(layer_norm_fp32(*norm_cross, h), context, mask);
  if (ff) h = h + ff(layer_norm_fp32(*norm_ff, h));
  h = h.transpose(1, 2).reshape_as(x);  // (B, C, H, W)
  return x + (proj_out ? convolve(*proj_out, h) : h);
}

UNetBlockImpl::UNetBlockImpl(ResBlock r, SpatialAttention a) {
  res = register_module("res", r);
  if (a) attention = register_module("attention", a);
}

torch::Tensor UNetBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& embedding,
                                     const torch::Tensor& context, const torch::Tensor& mask) {
  auto h = res(x, embedding);
  return attention ? attention(h, context, mask) : h;
}

UNetImpl::UNetImpl(UNetOptions o) : options(o) {
  const int64_t C = o.base_channels, E = 4 * o.base_channels, G = o.norm_groups;
  const bool builtin = o.conditioning == ConditioningSource::kBuiltin;
  TORCH_CHECK(builtin || o.context_dim >= 1, "UNet with precomputed conditioning needs context_dim >= 1");
  TORCH_CHECK(builtin || o.pooled_dim >= 0, "UNet pooled_dim must be >= 0");
  // Width of the cross-attention keys/values and of the pooled vector.
  const int64_t text_dim = builtin ? o.text.width : o.context_dim;
  const int64_t pooled_dim = builtin ? o.text.width : o.pooled_dim;
  // Registration order is that of the builtin model before conditioning sources existed,
  // so its parameter order (optimizer state, checkpoints) is unchanged.
  if (builtin) text_encoder = register_module("text_encoder", TextEncoder(o.text));
  time_fc1 = register_module("time_fc1", torch::nn::Linear(C, E));
  time_fc2 = register_module("time_fc2", torch::nn::Linear(E, E));
  if (pooled_dim > 0) text_to_embedding = register_module("text_to_embedding", torch::nn::Linear(pooled_dim, E));
  conv_in = register_module("conv_in", conv3x3(o.image_channels, C));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  middle_blocks = register_module("middle_blocks", torch::nn::ModuleList());
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());

  auto has_attention = [&](int64_t resolution) {
    const auto& r = o.attention_resolutions;
    return std::find(r.begin(), r.end(), resolution) != r.end();
  };
  auto res_block = [&](int64_t in, int64_t out) {
    return ResBlock(in, out, E, G, o.dropout, o.scale_shift_norm);
  };
  auto block = [&](int64_t in, int64_t out, bool attend) {
    SpatialAttention attention{nullptr};
    if (attend) {
      attention = SpatialAttention(out, o.attention_heads, text_dim, G, o.transformer_ff_mult, o.attention_projections);
    }
    return UNetBlock(res_block(in, out), attention);
  };

  // Down path: the channel count of every skip connection is remembered for the up path.
  std::vector<int64_t> skip_channels{C};
  int64_t channels = C, resolution = o.image_size;
  const int64_t levels = static_cast<int64_t>(o.channel_mults.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t out = C * o.channel_mults[level];
    for (int64_t i = 0; i < o.num_res_blocks; ++i) {
      down_blocks->push_back(block(channels, out, has_attention(resolution)));
      channels = out;
      skip_channels.push_back(channels);
    }
    if (level + 1 < levels) {
      downsamplers->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
      skip_channels.push_back(channels);
      resolution /= 2;
    }
  }
  middle_blocks->push_back(block(channels, channels, has_attention(resolution) || o.middle_attention));
  middle_blocks->push_back(UNetBlock(res_block(channels, channels), nullptr));
  // Up path: num_res_blocks + 1 blocks per level, each consuming one skip.
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t out = C * o.channel_mults[level];
    for (int64_t i = 0; i <= o.num_res_blocks; ++i) {
      const int64_t skip = skip_channels.back();
      skip_channels.pop_back();
      up_blocks->push_back(block(channels + skip, out, has_attention(resolution)));
      channels = out;
    }
    if (level > 0) {
      upsamplers->push_back(conv3x3(channels, channels));
      resolution *= 2;
    }
  }
  norm_out = register_module("norm_out", torch::nn::GroupNorm(G, channels));
  conv_out = register_module("conv_out", zero_init(conv3x3(channels, o.image_channels)));
}

Conditioning UNetImpl::encode_tokens(const torch::Tensor& tokens) {
  TORCH_CHECK(text_encoder, "this UNet has precomputed conditioning (model.conditioning=precomputed): it takes "
                            "context vectors, not caption tokens");
  const EncodedText text = text_encoder(tokens);
  return {text.tokens, text.valid, text.pooled};
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& tokens) {
  return forward(x_t, t, encode_tokens(tokens));
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x_t, const torch::Tensor& t, const Conditioning& condition) {
  TORCH_CHECK(x_t.dim() == 4 && x_t.size(1) == options.image_channels, "UNet expects x_t (B, ",
              options.image_channels, ", H, W), got ", x_t.sizes());
  const int64_t context_dim =
      options.conditioning == ConditioningSource::kBuiltin ? options.text.width : options.context_dim;
  TORCH_CHECK(condition.context.dim() == 3 && condition.context.size(2) == context_dim,
              "UNet expects context (B, L, ", context_dim, "), got ", condition.context.sizes());
  TORCH_CHECK(condition.mask.defined() && condition.mask.dim() == 2, "UNet expects a (B, L) context mask");
  TORCH_CHECK(condition.pooled.defined() == static_cast<bool>(text_to_embedding),
              text_to_embedding ? "this UNet needs a pooled vector (B, D')" : "this UNet has no pooled input (pooled_dim 0)");
  auto embedding = time_fc2(torch::silu(time_fc1(timestep_embedding(t, options.base_channels))));
  if (text_to_embedding) embedding = embedding + text_to_embedding(condition.pooled);  // (B, E)
  const torch::Tensor& context = condition.context;
  const torch::Tensor& mask = condition.mask;

  // Checkpointing drops each block's activations in the forward and recomputes
  // them in backward: only while training, when there is a backward to come.
  const bool recompute = options.checkpoint_activations && is_training() && torch::GradMode::is_enabled();
  auto run_block = [&](const std::shared_ptr<torch::nn::Module>& m, const torch::Tensor& x) {
    auto block = std::dynamic_pointer_cast<UNetBlockImpl>(m);
    if (!recompute) return block->forward(x, embedding, context, mask);
    // The context and the embedding are inputs so the text encoder and
    // the time MLP get their gradients; the padding mask needs none.
    return checkpoint(
        [block, mask](const std::vector<torch::Tensor>& in) { return block->forward(in[0], in[1], in[2], mask); },
        {x, embedding, context});
  };

  auto h = convolve(*conv_in, x_t);
  std::vector<torch::Tensor> skips{h};
  const int64_t levels = static_cast<int64_t>(options.channel_mults.size());
  size_t down = 0;
  for (int64_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < options.num_res_blocks; ++i) {
      h = run_block(down_blocks->ptr(down++), h);
      skips.push_back(h);
    }
    if (level + 1 < levels) {
      h = convolve(*downsamplers[level]->as<torch::nn::Conv2dImpl>(), h);
      skips.push_back(h);
    }
  }
  for (const auto& m : *middle_blocks) h = run_block(m, h);
  size_t up = 0;
  for (int64_t level = levels - 1; level >= 0; --level) {
    for (int64_t i = 0; i <= options.num_res_blocks; ++i) {
      h = run_block(up_blocks->ptr(up++), torch::cat({h, skips.back()}, 1));
      skips.pop_back();
    }
    if (level > 0) {
      h = F::interpolate(h, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(torch::kNearest));
      h = convolve(*upsamplers[levels - 1 - level]->as<torch::nn::Conv2dImpl>(), h);
    }
  }
  return convolve(*conv_out, group_norm_silu(*norm_out, h));
}

}  // namespace difftrain::model
