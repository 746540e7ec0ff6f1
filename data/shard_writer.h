// ShardWriter: writes one shard in format v1 (data/shard_format.h,
// docs/SHARD_FORMAT.md), atomically.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/shard_format.h"

namespace difftrain::data {

// Strict UTF-8 (RFC 3629): no overlong forms, UTF-16 surrogates or values past U+10FFFF.
bool is_valid_utf8(const std::string& text);

// Why a caption cannot be stored (docs/SHARD_FORMAT.md: UTF-8 without NUL bytes), or "".
std::string caption_defect(const std::string& caption);

// Samples are buffered in memory and the file is written in one go by close():
// to "<path>.tmp", then fsync, rename to <path> and fsync of the directory, so
// a crash never leaves a half shard under the final name (the loader only
// lists "*.h5"). Keep shards to a size that fits in memory (a few thousand
// images). Safe to use from any thread (HDF5 access is serialised, see
// data/hdf5_util.h); one ShardWriter is not itself meant to be shared.
class ShardWriter {
 public:
  // Throws ShardError if the geometry is not a valid v1 geometry (C must be 1 or 3).
  ShardWriter(std::string path, ImageGeometry geometry);
  ~ShardWriter();  // if not closed: removes the temp file, never throws
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // image: (H, W, C). A caption with a NUL byte (an HDF5 string would end there) or invalid
  // UTF-8 throws ShardError naming the sample index. Either every sample has a label (written as the optional
  // `labels` dataset) or none has; close() throws on a mix.
  void add(const uint8_t* image_hwc, const std::string& caption, std::optional<int64_t> label = std::nullopt);
  // An extra string attribute on the file's root (readers ignore unknown ones);
  // e.g. the synthetic generator records the spec it was made with.
  void set_attribute(const std::string& name, const std::string& value);
  // Writes datasets + attributes, fsyncs, renames. Throws ShardError (and
  // leaves no file behind) on failure or if no sample was added.
  void close();

  int64_t count() const { return static_cast<int64_t>(captions_.size()); }
  const std::string& path() const { return path_; }

 private:
  void write_temp_file() const;

  std::string path_;
  std::string temp_path_;
  ImageGeometry geometry_;
  std::vector<uint8_t> images_;        // (N, H, W, C)
  std::vector<std::string> captions_;  // (N)
  std::vector<int64_t> labels_;        // (N) or empty
  std::vector<std::pair<std::string, std::string>> extra_attributes_;
  bool closed_ = false;
};

// The text embeddings of every sample of one shard, as `difftrain encode-text`
// adds them (docs/CONDITIONING.md).
struct TextEmbeddings {
  TextEmbeddingShape shape;       // L, D, D' (0: no pooled)
  int64_t count = 0;              // N, must equal the shard's
  std::vector<uint16_t> states;   // (N, L, D) float16 bits
  std::vector<uint8_t> mask;      // (N, L) 1 = real token, 0 = padding
  std::vector<uint16_t> pooled;   // (N, D') float16 bits, empty when D' = 0
  // The null condition when shape.has_null: one row of each, same layouts.
  std::vector<uint16_t> null_states;  // (1, L, D)
  std::vector<uint8_t> null_mask;     // (1, L)
  std::vector<uint16_t> null_pooled;  // (1, D')
  std::string encoder;            // the `text_encoder` attribute
  std::string tokenizer;          // the `text_tokenizer` attribute
  std::string null_kind;          // the `text_null` attribute: "empty" or "zeros" (the null rows' kind); "" = none
};

// Rewrites the shard at `path` with these embeddings, atomically: the file is
// copied to "<path>.tmp" (images, captions, labels and attributes stay
// byte-identical), any text embeddings already there are replaced (their old
// space is not reclaimed; h5repack does that), fsync, rename, fsync of the
// directory. Throws ShardError naming the shard when the sizes disagree with
// the shard's N or with each other, or on any I/O failure (leaving the shard as it was).
void write_text_embeddings(const std::string& path, const TextEmbeddings& embeddings);

// The latents of every sample of one shard, as `difftrain encode-images` adds them
// (docs/LATENTS.md).
struct Latents {
  LatentInfo info;              // shape, dtype, encoder, scale, shift
  int64_t count = 0;            // N, must equal the shard's
  std::vector<uint16_t> values;  // (N, c, h, w) 16-bit float bits in info.shape.dtype
};

// Rewrites the shard at `path` with these latents, atomically, as write_text_embeddings does:
// any latents already there are replaced, everything else stays byte-identical.
void write_latents(const std::string& path, const Latents& latents);

}  // namespace difftrain::data
