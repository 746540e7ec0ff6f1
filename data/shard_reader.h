// Reading shards in format v1 (data/shard_format.h, docs/SHARD_FORMAT.md):
// validate_shard, open_shard_directory, ShardReader.
//
// Threading: these functions may be called from any thread; their HDF5 calls
// are serialised by one process-wide lock (data/hdf5_util.h) because HDF5 is
// not thread-safe. A single ShardReader must not be used by two threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/shard_format.h"

namespace difftrain::data {

struct ShardInfo {
  std::string path;
  int64_t count = 0;  // N, the number of samples
  ImageGeometry geometry;
  // Present when the shard carries precomputed text embeddings (text_states + text_mask,
  // optionally text_pooled), with the attributes that name their encoder and tokenizer.
  std::optional<TextEmbeddingShape> text;
  std::string text_encoder, text_tokenizer;  // "" without text
  // Present when the shard carries latents (`latents` + its attributes).
  std::optional<LatentInfo> latents;
};

// Opens and validates a shard: exists, is HDF5 (a truncated file gives a clean
// error), format attributes, format_version == 1, `images` is uint8 rank-4 with
// C == 3 and (H, W) == expected, `captions` is a string dataset with one entry
// per image. Throws ShardError whose message names the file, the dataset or
// attribute, what was found and what was expected, e.g.
//   "shard runs/data/shard-00003.h5: dataset 'images' has dtype float32, expected uint8".
// Text embeddings, when present, are checked too: states and mask together,
// float16 (N, L, D) / uint8 (N, L) / float16 (N, D'), the encoder attributes set.
ShardInfo validate_shard(const std::string& path, const ImageGeometry& expected);

// Lists "*.h5" in a directory sorted by name and validates each. Throws
// ShardError if the directory is missing or holds no shard.
std::vector<ShardInfo> open_shard_directory(const std::string& dir, const ImageGeometry& expected);

// The (H, W, C) the first shard (by file name) of a directory says it holds;
// open_shard_directory(dir, shard_directory_geometry(dir)) then validates all.
// Throws ShardError naming the directory when it has no shard.
ImageGeometry shard_directory_geometry(const std::string& dir);

// The text-embedding shape every shard of a directory agrees on, or nullopt
// when none carries embeddings. Throws ShardError naming the first shard that
// differs from the first one: it lacks the embeddings while the first has them
// (or the other way round), has another (L, D, D'), or another `text_encoder`.
std::optional<TextEmbeddingShape> text_embedding_shape(const std::vector<ShardInfo>& shards);

// The latents every shard of a directory agrees on (shape, dtype, encoder, scale and shift),
// or nullopt when none carries latents. Throws ShardError naming the first shard that
// differs from the first one.
std::optional<LatentInfo> latent_info(const std::vector<ShardInfo>& shards);

// The optional `labels` dataset of a shard (int64, one class per sample), or
// nullopt when the shard has none. Throws ShardError for a malformed one.
std::optional<std::vector<int64_t>> read_shard_labels(const std::string& path);

// A string root attribute of a shard, or nullopt when the shard has none by
// that name (writers may add attributes beyond the format's own).
std::optional<std::string> read_shard_attribute(const std::string& path, const std::string& name);

// Random access to the samples of one validated shard; keeps the file open.
// The captions are read in one go when the shard is opened and kept in memory
// (a few hundred kB for a shard of thousands); images are read on demand.
class ShardReader {
 public:
  // Opens the file; throws ShardError if it is gone or no longer matches info.
  explicit ShardReader(const ShardInfo& info);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  int64_t size() const { return info_.count; }
  const ShardInfo& info() const { return info_; }
  // image_hwc_out: (H, W, C) bytes, or null to skip the image; caption_out may be null.
  void read(int64_t index, uint8_t* image_hwc_out, std::string* caption_out);
  // The text embeddings of one sample (info().text must be set, else ShardError):
  // states_out (L, D) float16 bits, mask_out (L), pooled_out (D') float16 bits
  // (only read when the shard has `text_pooled`). Any may be null to skip it.
  void read_text(int64_t index, uint16_t* states_out, uint8_t* mask_out, uint16_t* pooled_out);
  // The latent of one sample (info().latents must be set, else ShardError):
  // (c, h, w) 16-bit float bits in the shard's dtype (info().latents->shape.dtype).
  void read_latent(int64_t index, uint16_t* latent_out);
  // The null condition (the empty caption's embedding), same layout as one
  // sample; info().text->has_null must be set, else ShardError.
  void read_text_null(uint16_t* states_out, uint8_t* mask_out, uint16_t* pooled_out);

 private:
  struct Handles;      // the HDF5 objects, kept out of this header
  struct TextHandles;  // those of the text embeddings, when present
  struct LatentHandles;  // those of the latents, when present
  void check_index(int64_t index) const;
  ShardInfo info_;
  std::vector<std::string> captions_;  // (N)
  std::unique_ptr<Handles> h5_;
  std::unique_ptr<TextHandles> text_h5_;
  std::unique_ptr<LatentHandles> latent_h5_;
};

}  // namespace difftrain::data
