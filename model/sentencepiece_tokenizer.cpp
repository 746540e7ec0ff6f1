#include "model/sentencepiece_tokenizer.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "model/frozen_text_encoder.h"

namespace difftrain::model {

struct SentencePieceTokenizer::Shim {
  void* (*load)(const char*, char*, size_t);
  void (*free)(void*);
  long (*encode)(void*, const char*, size_t, int*, size_t, char*, size_t);
  int (*eos_id)(void*);
  int (*pad_id)(void*);
};

namespace {

constexpr size_t kErrorSize = 512;

// Loaded once per process and kept: $DIFFTRAIN_SENTENCEPIECE_SHIM, else the
// path the build put it at.
template <typename Shim>
const Shim& shim() {
  static const Shim loaded = [] {
    const char* env = std::getenv("DIFFTRAIN_SENTENCEPIECE_SHIM");
    const std::string path = env != nullptr && *env != '\0' ? env : DIFFTRAIN_SENTENCEPIECE_SHIM_PATH;
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      throw std::runtime_error("cannot load the SentencePiece shim " + path + " (set DIFFTRAIN_SENTENCEPIECE_SHIM): " +
                               (why != nullptr ? why : "unknown error"));
    }
    const auto symbol = [&](const char* name) {
      void* address = ::dlsym(handle, name);
      if (address == nullptr) throw std::runtime_error("SentencePiece shim " + path + " lacks " + name);
      return address;
    };
    Shim s{};
    s.load = reinterpret_cast<decltype(s.load)>(symbol("difftrain_spm_load"));
    s.free = reinterpret_cast<decltype(s.free)>(symbol("difftrain_spm_free"));
    s.encode = reinterpret_cast<decltype(s.encode)>(symbol("difftrain_spm_encode"));
    s.eos_id = reinterpret_cast<decltype(s.eos_id)>(symbol("difftrain_spm_eos_id"));
    s.pad_id = reinterpret_cast<decltype(s.pad_id)>(symbol("difftrain_spm_pad_id"));
    return s;
  }();
  return loaded;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  const std::string what = "tokenizer " + model_path + ": ";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(model_path, ec)) {
    throw std::runtime_error(what + "file does not exist (expected \"bytes\" or a SentencePiece .model file)");
  }
  shim_ = &shim<Shim>();
  char error[kErrorSize] = {};
  processor_ = shim_->load(model_path.c_str(), error, sizeof error);
  if (processor_ == nullptr) throw std::runtime_error(what + "not a SentencePiece model: " + error);
  eos_id_ = shim_->eos_id(processor_);
  pad_id_ = shim_->pad_id(processor_);
  description_ = "sentencepiece " + std::filesystem::path(model_path).filename().string() +
                 " sha256:" + file_sha256(model_path);
}

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (processor_ != nullptr) shim_->free(processor_);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& caption, int64_t max_tokens) const {
  const int64_t room = eos_id_ >= 0 ? max_tokens - 1 : max_tokens;
  std::vector<int> pieces(static_cast<size_t>(std::max<int64_t>(room, 0)));
  char error[kErrorSize] = {};
  const long count = shim_->encode(processor_, caption.data(), caption.size(), pieces.data(), pieces.size(), error,
                                   sizeof error);
  if (count < 0) throw std::runtime_error("tokenizer " + path_ + ": cannot encode a caption: " + error);
  std::vector<int64_t> ids(pieces.begin(), pieces.begin() + std::min<long>(count, static_cast<long>(pieces.size())));
  if (eos_id_ >= 0 && max_tokens >= 1) ids.push_back(eos_id_);
  return ids;
}

}  // namespace difftrain::model
