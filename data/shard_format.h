// Shard format v1: the names and constants of the on-disk layout of one
// training shard. The format itself (with an h5py recipe) is described in
// docs/SHARD_FORMAT.md; change the two together and bump the version when a
// reader of the old version could misread a new file.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace difftrain::data {

inline constexpr int64_t kShardFormatVersion = 1;
inline constexpr const char* kShardFormatName = "difftrain-shard";
inline constexpr const char* kShardExtension = ".h5";

inline constexpr const char* kImagesDataset = "images";      // uint8 (N, H, W, C)
inline constexpr const char* kCaptionsDataset = "captions";  // UTF-8 strings (N)
inline constexpr const char* kLabelsDataset = "labels";      // optional: int64 class labels (N)
// Optional precomputed text embeddings (docs/CONDITIONING.md): states and mask
// come together or not at all; pooled is optional within the group.
inline constexpr const char* kTextStatesDataset = "text_states";  // float16 (N, L, D)
inline constexpr const char* kTextMaskDataset = "text_mask";      // uint8 (N, L), 1 = real token
inline constexpr const char* kTextPooledDataset = "text_pooled";  // float16 (N, D')
// Optional within the group: the null condition (the empty caption's embedding), one row.
inline constexpr const char* kTextNullStatesDataset = "text_null_states";  // float16 (1, L, D)
inline constexpr const char* kTextNullMaskDataset = "text_null_mask";      // uint8 (1, L)
inline constexpr const char* kTextNullPooledDataset = "text_null_pooled";  // float16 (1, D'), iff text_pooled

// Optional latents of the images (docs/LATENTS.md), written by `difftrain encode-images`:
// the VAE encoder's output, unscaled; a latent model diffuses (latents - latent_shift) * latent_scale.
inline constexpr const char* kLatentsDataset = "latents";  // float16 or bfloat16 (N, c, h, w)

inline constexpr const char* kFormatAttribute = "format";
inline constexpr const char* kFormatVersionAttribute = "format_version";
inline constexpr const char* kHeightAttribute = "height";
inline constexpr const char* kWidthAttribute = "width";
inline constexpr const char* kChannelsAttribute = "channels";
// Optional: the class names of `labels`, as a JSON array of strings.
inline constexpr const char* kLabelNamesAttribute = "label_names";
// With the text embeddings, required: which encoder made them ("<file> sha256:<hex>" from
// `difftrain encode-text`, free text otherwise) and which tokenizer ("bytes", "sentencepiece ...").
inline constexpr const char* kTextEncoderAttribute = "text_encoder";
inline constexpr const char* kTextTokenizerAttribute = "text_tokenizer";
// Optional with the text embeddings: which null condition text_null_* holds, "empty" (the
// empty caption's embedding, the default when absent) or "zeros".
inline constexpr const char* kTextNullAttribute = "text_null";
// With the latents, required: the encoder ("<file> sha256:<hex>" from `difftrain encode-images`,
// free text otherwise) and the float64 scale and shift.
inline constexpr const char* kLatentEncoderAttribute = "latent_encoder";
inline constexpr const char* kLatentScaleAttribute = "latent_scale";
inline constexpr const char* kLatentShiftAttribute = "latent_shift";

// Images are grey (C = 1) or RGB (C = 3); RGBA, palette and 16-bit images are
// converted before sharding (`difftrain make-shards`).
inline bool is_valid_channel_count(int64_t channels) { return channels == 1 || channels == 3; }
// Samples per HDF5 chunk of `images`: big enough for sequential reads, small
// enough that a random single-sample read does not pull in megabytes.
inline constexpr int64_t kChunkSamples = 64;

// Every data-layer failure the caller can do something about (missing, corrupt
// or mismatched shards). The message names the file and the culprit.
struct ShardError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ImageGeometry {
  int64_t height = 0, width = 0, channels = 0;

  int64_t bytes() const { return height * width * channels; }  // of one (H, W, C) image
};

inline bool operator==(const ImageGeometry& a, const ImageGeometry& b) {
  return a.height == b.height && a.width == b.width && a.channels == b.channels;
}
inline bool operator!=(const ImageGeometry& a, const ImageGeometry& b) { return !(a == b); }

// The shape of a shard's text embeddings: L tokens of width D, pooled width D'
// (0 when the shard has no `text_pooled`).
struct TextEmbeddingShape {
  int64_t tokens = 0, width = 0, pooled_width = 0;  // L, D, D'
  bool has_null = false;  // the shard stores the null condition (text_null_*)

  int64_t state_values() const { return tokens * width; }  // of one (L, D) sample
};

inline bool operator==(const TextEmbeddingShape& a, const TextEmbeddingShape& b) {
  return a.tokens == b.tokens && a.width == b.width && a.pooled_width == b.pooled_width && a.has_null == b.has_null;
}
inline bool operator!=(const TextEmbeddingShape& a, const TextEmbeddingShape& b) { return !(a == b); }

// "L=77 D=768 D'=768" (D'=none without pooled), for messages.
inline std::string to_string(const TextEmbeddingShape& s) {
  return "L=" + std::to_string(s.tokens) + " D=" + std::to_string(s.width) +
         " D'=" + (s.pooled_width > 0 ? std::to_string(s.pooled_width) : std::string("none")) +
         (s.has_null ? " with null condition" : "");
}

enum class LatentDtype { kFloat16, kBfloat16 };

// The shape of a shard's latents: (c, h, w) per sample, stored as dtype.
struct LatentShape {
  int64_t channels = 0, height = 0, width = 0;
  LatentDtype dtype = LatentDtype::kFloat16;

  int64_t values() const { return channels * height * width; }  // of one (c, h, w) sample
};

inline bool operator==(const LatentShape& a, const LatentShape& b) {
  return a.channels == b.channels && a.height == b.height && a.width == b.width && a.dtype == b.dtype;
}
inline bool operator!=(const LatentShape& a, const LatentShape& b) { return !(a == b); }

inline const char* to_string(LatentDtype d) { return d == LatentDtype::kFloat16 ? "float16" : "bfloat16"; }

// "(4, 8, 8) float16", for messages.
inline std::string to_string(const LatentShape& s) {
  return "(" + std::to_string(s.channels) + ", " + std::to_string(s.height) + ", " + std::to_string(s.width) + ") " +
         to_string(s.dtype);
}

// What a shard's latents are: shape, the encoder that made them and how the model scales them.
struct LatentInfo {
  LatentShape shape;
  std::string encoder;
  double scale = 1.0, shift = 0.0;
};

// "(H, W, C)" with numbers, for error messages.
inline std::string to_string(const ImageGeometry& g) {
  return "(" + std::to_string(g.height) + ", " + std::to_string(g.width) + ", " +
         std::to_string(g.channels) + ")";
}

}  // namespace difftrain::data
