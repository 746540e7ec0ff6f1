// Tokenizers for the frozen text encoder (model/frozen_text_encoder.h):
// TextTokenizer, ByteTokenizer (ByT5's byte ids), make_text_tokenizer.
// The trainable encoder of model/text_encoder.h has its own simpler byte
// tokenizer (model/tokenizer.h); these are for encoders trained elsewhere.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace difftrain::model {

class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  // The caption's token ids, at most max_tokens of them, end-of-sequence id
  // included where the tokenizer has one; the encoder pads the rest.
  virtual std::vector<int64_t> encode(const std::string& caption, int64_t max_tokens) const = 0;
  // The id used for padding unless the encoder names its own (`pad_id`).
  virtual int64_t default_pad_id() const = 0;
  // What goes into a shard's `text_tokenizer` attribute: "bytes" or
  // "sentencepiece <file> sha256:<hex>".
  virtual std::string describe() const = 0;
};

// ByT5's byte ids (Xue et al. 2022, https://arxiv.org/abs/2105.13626): pad 0,
// eos 1, unk 2, UTF-8 byte b → b + 3. A caption keeps its first
// max_tokens - 1 bytes, then eos; the empty caption is [eos].
class ByteTokenizer : public TextTokenizer {
 public:
  static constexpr int64_t kPad = 0, kEos = 1, kByteOffset = 3;
  std::vector<int64_t> encode(const std::string& caption, int64_t max_tokens) const override;
  int64_t default_pad_id() const override { return kPad; }
  std::string describe() const override { return "bytes"; }
};

// "bytes" → ByteTokenizer; a path to a SentencePiece model file →
// SentencePieceTokenizer (model/sentencepiece_tokenizer.h). Throws
// std::runtime_error naming the file when it cannot be loaded.
std::unique_ptr<TextTokenizer> make_text_tokenizer(const std::string& spec);

}  // namespace difftrain::model
