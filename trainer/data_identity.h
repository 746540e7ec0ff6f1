// What made the training data, recorded in the configuration: a model trained on
// precomputed text embeddings or VAE latents is only usable with the encoders
// that made them, so the saved config names them (docs/CONDITIONING.md,
// docs/LATENTS.md) and `sample` checks the files it is given against them.
#pragma once

#include "trainer/config.h"

namespace difftrain {

// Reads data.dir's shards (all ranks may call it; it only reads) and returns the config
// with model.text_encoder / model.text_null (model.conditioning=precomputed) and
// data.latent_encoder, and with data.latent_scale=0 data.latent_scale / latent_shift
// (data.latents) filled in from the shards. A value set in the config that differs from
// the shards', or latents whose (c, h, w) differ from data.latent_channels / latent_size,
// is a ConfigError naming the key, the shards' value and the config's. Without either
// option the config is returned unchanged and no shard is read.
Config resolve_data_identity(Config config);

}  // namespace difftrain
