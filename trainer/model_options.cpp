#include "trainer/model_options.h"

namespace difftrain {

model::UNetOptions unet_options_from(const ModelConfig& c, int64_t image_size, int64_t image_channels) {
  model::UNetOptions o;
  o.image_size = image_size;
  o.image_channels = image_channels;
  o.base_channels = c.base_channels;
  o.channel_mults = c.channel_mults;
  o.num_res_blocks = c.num_res_blocks;
  o.attention_resolutions = c.attention_resolutions;
  o.attention_heads = c.attention_heads;
  o.norm_groups = c.norm_groups;
  o.dropout = c.dropout;
  o.checkpoint_activations = c.checkpoint_activations;
  o.transformer_ff_mult = c.transformer_ff_mult;
  o.attention_projections = c.attention_projections;
  o.scale_shift_norm = c.scale_shift_norm;
  o.middle_attention = c.middle_attention;
  o.text = {c.max_tokens, c.text_width, c.text_layers, c.text_heads};
  if (c.conditioning == "precomputed") {
    o.conditioning = model::ConditioningSource::kPrecomputed;
    o.context_dim = c.context_dim;
    o.pooled_dim = c.pooled_dim;
  }
  return o;
}

}  // namespace difftrain
