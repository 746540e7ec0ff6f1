// Byte-level tokenizer: no vocabulary file to ship or download.
// Token 0 is padding; byte b becomes token b + 1. A caption of only padding
// (the empty caption) is the null condition used for classifier-free guidance.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::model {

inline constexpr int64_t kPadToken = 0;
inline constexpr int64_t kVocabSize = 257;

// Returns `max_tokens` ids: the caption's UTF-8 bytes (truncated) then padding.
inline std::vector<int64_t> tokenize(const std::string& caption, int64_t max_tokens) {
  std::vector<int64_t> ids(static_cast<size_t>(max_tokens), kPadToken);
  const size_t n = std::min(caption.size(), ids.size());
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(static_cast<unsigned char>(caption[i])) + 1;
  return ids;
}

}  // namespace difftrain::model
