// SentencePieceTokenizer: a TextTokenizer over a SentencePiece model file
// (Kudo & Richardson 2018, https://arxiv.org/abs/1808.06226), through
// Debian's libsentencepiece, reached via a small shared object loaded at run
// time (model/sentencepiece_shim.cpp says why).
#pragma once

#include <string>

#include "model/text_tokenizer.h"

namespace difftrain::model {

class SentencePieceTokenizer : public TextTokenizer {
 public:
  // Throws std::runtime_error naming the file if it is missing or not a
  // model, or if the shim library cannot be loaded.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  // The pieces' ids, cut to max_tokens - 1, then the model's eos id when it has
  // one (spm_train's default: 2); without eos, cut to max_tokens.
  std::vector<int64_t> encode(const std::string& caption, int64_t max_tokens) const override;
  // The model's pad id, or 0 when it has none (spm_train's default).
  int64_t default_pad_id() const override { return pad_id_ >= 0 ? pad_id_ : 0; }
  std::string describe() const override { return description_; }

 private:
  struct Shim;  // the dlopen'ed functions
  const Shim* shim_ = nullptr;
  void* processor_ = nullptr;
  int eos_id_ = -1, pad_id_ = -1;
  std::string path_, description_;
};

}  // namespace difftrain::model
