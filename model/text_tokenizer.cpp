#include "model/text_tokenizer.h"

#include "model/sentencepiece_tokenizer.h"

namespace difftrain::model {

std::vector<int64_t> ByteTokenizer::encode(const std::string& caption, int64_t max_tokens) const {
  const size_t bytes = std::min(caption.size(), static_cast<size_t>(std::max<int64_t>(max_tokens - 1, 0)));
  std::vector<int64_t> ids;
  ids.reserve(bytes + 1);
  for (size_t i = 0; i < bytes; ++i) ids.push_back(static_cast<unsigned char>(caption[i]) + kByteOffset);
  if (max_tokens >= 1) ids.push_back(kEos);
  return ids;
}

std::unique_ptr<TextTokenizer> make_text_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  return std::make_unique<SentencePieceTokenizer>(spec);
}

}  // namespace difftrain::model
