// FrozenTextEncoder: a text encoder trained elsewhere, loaded from a
// TorchScript file and only ever run forward (docs/CONDITIONING.md). It makes
// the precomputed embeddings that `difftrain encode-text` stores in shards.
//
// The file's contract: forward(tokens: int64 (B, L), mask: bool (B, L), true
// at real tokens) returns a tuple (states: float (B, L, D), pooled: float
// (B, D')); the module has an int attribute `max_tokens` (L) and optionally an
// int `pad_id`. Everything is checked when the file is loaded, on a probe batch.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/text_tokenizer.h"

namespace difftrain::model {

struct TextEmbeddingBatch {
  torch::Tensor states;  // (B, L, D) float32
  torch::Tensor mask;    // (B, L) uint8: 1 = real token, 0 = padding
  torch::Tensor pooled;  // (B, D') float32
};

// The file's SHA-256, lowercase hex. Throws std::runtime_error naming it when unreadable.
std::string file_sha256(const std::string& path);
// The hex after "sha256:" in an identity "<file> sha256:<hex>", or "" (written by other tooling).
std::string sha256_of_identity(const std::string& identity);

class FrozenTextEncoder {
 public:
  // Loads and validates; throws std::runtime_error "text encoder <path>: ..."
  // for a missing file, a file that is not TorchScript, a forward of the wrong
  // arity, a missing or bad `max_tokens` / `pad_id`, and probe outputs of the
  // wrong kind, rank, shape or dtype, or not finite.
  FrozenTextEncoder(const std::string& path, std::unique_ptr<TextTokenizer> tokenizer);

  // Tokenises (padded to max_tokens) and runs forward without gradients.
  // Throws std::runtime_error if the outputs stop matching the probe's shapes
  // or are not finite (naming the first offending caption of the batch).
  TextEmbeddingBatch encode(const std::vector<std::string>& captions) const;
  // The tokens and mask encode() feeds: (B, L) int64 and (B, L) uint8.
  std::pair<torch::Tensor, torch::Tensor> tokenize(const std::vector<std::string>& captions) const;

  // The null condition for classifier-free guidance: the embedding of the
  // empty caption (Stable Diffusion's convention), (1, L, D) / (1, L) / (1, D'),
  // computed once at load.
  const TextEmbeddingBatch& null_condition() const { return null_; }

  int64_t max_tokens() const { return max_tokens_; }      // L
  int64_t width() const { return width_; }                // D
  int64_t pooled_width() const { return pooled_width_; }  // D'
  int64_t pad_id() const { return pad_id_; }
  const std::string& sha256() const { return sha256_; }
  // "<file name> sha256:<hex>": the shards' `text_encoder` attribute.
  const std::string& identity() const { return identity_; }
  const TextTokenizer& tokenizer() const { return *tokenizer_; }

 private:
  TextEmbeddingBatch run(const std::vector<std::string>& captions, const std::string& what) const;

  std::string path_, sha256_, identity_;
  std::unique_ptr<TextTokenizer> tokenizer_;
  mutable torch::jit::Module module_;  // forward is not const in TorchScript's API
  int64_t max_tokens_ = 0, width_ = 0, pooled_width_ = 0, pad_id_ = 0;
  TextEmbeddingBatch null_;
};

}  // namespace difftrain::model
