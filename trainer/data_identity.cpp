#include "trainer/data_identity.h"

#include <cstdio>
#include <string>

#include "data/shard_reader.h"

namespace difftrain {
namespace {

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

// `key` is unset ("") and takes the shards' value, or must equal it.
void resolve(std::string* value, const std::string& from_shards, const std::string& key, const std::string& what,
             const std::string& dir) {
  if (value->empty()) {
    *value = from_shards;
  } else if (*value != from_shards) {
    throw ConfigError("config key '" + key + "' = '" + *value + "', but the shards in data.dir = " + dir + " hold " +
                      what + " from '" + from_shards + "': the model would be trained on another encoder's output "
                      "than the one named; unset the key (it is resolved from the shards) or re-encode the shards");
  }
}

}  // namespace

Config resolve_data_identity(Config c) {
  const bool precomputed = c.model.conditioning == "precomputed";
  if (!precomputed && !c.data.latents) return c;
  const auto shards = data::open_shard_directory(
      c.data.dir, data::ImageGeometry{c.data.image_size, c.data.image_size, c.data.channels});
  if (precomputed && data::text_embedding_shape(shards)) {
    resolve(&c.model.text_encoder, shards.front().text_encoder, "model.text_encoder", "text embeddings", c.data.dir);
    const std::string null = data::read_shard_attribute(shards.front().path, data::kTextNullAttribute).value_or("empty");
    resolve(&c.model.text_null, null, "model.text_null", "the null condition", c.data.dir);
  }
  if (c.data.latents) {
    const auto latents = data::latent_info(shards);
    if (!latents) {
      throw ConfigError("data.latents=true, but the shards in data.dir = " + c.data.dir + " carry no latents (dataset '" +
                        data::kLatentsDataset + "'); compute them first with `difftrain encode-images --vae-encoder "
                        "ENCODER.pt --data " + c.data.dir + "` (docs/LATENTS.md)");
    }
    const data::LatentShape& s = latents->shape;
    if (s.channels != c.data.latent_channels || s.height != c.data.latent_size || s.width != c.data.latent_size) {
      throw ConfigError("data.latents=true, but the shards in data.dir = " + c.data.dir + " hold latents " +
                        data::to_string(s) + " (c, h, w), while the config says data.latent_channels=" +
                        std::to_string(c.data.latent_channels) + " data.latent_size=" +
                        std::to_string(c.data.latent_size) + "; set these keys to the shards' shape (square latents)");
    }
    resolve(&c.data.latent_encoder, latents->encoder, "data.latent_encoder", "latents", c.data.dir);
    if (c.data.latent_scale == 0) {
      c.data.latent_scale = latents->scale;
      c.data.latent_shift = latents->shift;
    }
  }
  return c;
}

}  // namespace difftrain
