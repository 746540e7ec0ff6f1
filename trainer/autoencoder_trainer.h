// `difftrain autoencoder train`: the KL autoencoder of model/autoencoder.h trained on
// the shards' images with the diffusion trainer's machinery (docs/LATENTS.md): the
// same Config (its autoencoder.* section for the network and loss; run, data, train,
// distributed, checkpoint and monitoring as they are), AdamW with warm-up + cosine,
// gradient clipping, EMA, bf16/fp16 autocast with the loss scaler, data-parallel
// ranks through the GradientReducer, checkpoints resumed from the newest verified
// one, the run-directory lock, the non-finite guard, stop signals, metrics.jsonl and
// Prometheus. The reparameterisation noise of each sample comes from its draw key
// (run seed, epoch, position: trainer/sample_draws.h), so a resumed run ends
// bit-identical and 2 ranks x batch b train like 1 rank x batch 2b.
#pragma once

#include <string>

#include "model/autoencoder.h"
#include "trainer/config.h"

namespace difftrain {

class MpiSession;

// autoencoder.* + data.channels -> the network's options.
model::AutoencoderOptions autoencoder_options_from(const Config& config);

// What autoencoder training needs beyond validate_config: images, not latents
// (data.latents false), data.image_size divisible by f = 2^(len(autoencoder.channel_mults) - 1),
// one batch's full-resolution feature map under 32 GiB. ConfigError naming the key.
void check_autoencoder_config(const Config& config);

// Keys a resumed autoencoder run may not change: run.seed, the data keys of is_geometry_key
// (trainer/config_diff.h) and every autoencoder.* key (kl_weight and recon_loss included: they
// define what the latents are trained to be). model.* and diffusion.* are not used here.
bool is_autoencoder_geometry_key(const std::string& key);

// True when the checkpoint directory's ema.pt holds an autoencoder (encoder + decoder),
// false for a diffusion UNet's. Reads the file; CheckpointError when it cannot.
bool is_autoencoder_checkpoint(const std::string& dir);

// Trains until train.max_steps, resuming from the newest verified checkpoint under
// run.dir. Collective: every rank calls it.
void train_autoencoder(const Config& config, MpiSession& session);

}  // namespace difftrain
