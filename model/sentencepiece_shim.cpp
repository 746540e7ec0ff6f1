// A C interface to libsentencepiece, built as its own shared object and
// loaded by model/sentencepiece_tokenizer.cpp with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND). Why: Debian's libsentencepiece.so.0 carries its own copy of
// protobuf-lite with exported symbols, and LibTorch loads libprotobuf.so.32;
// linked into one program, libprotobuf's static initialisers bind to
// sentencepiece's copy and the program crashes before main. Loaded locally
// and deep-bound, each library keeps its own protobuf.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

namespace {
void set_error(char* out, size_t size, const std::string& message) {
  if (size == 0) return;
  std::strncpy(out, message.c_str(), size - 1);
  out[size - 1] = '\0';
}
}  // namespace

extern "C" {

void* difftrain_spm_load(const char* path, char* error, size_t error_size) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    delete processor;
    return nullptr;
  }
  return processor;
}

void difftrain_spm_free(void* processor) { delete static_cast<sentencepiece::SentencePieceProcessor*>(processor); }

// Writes up to `capacity` ids; returns how many the text has, or -1 (error set).
long difftrain_spm_encode(void* processor, const char* text, size_t length, int* ids, size_t capacity, char* error,
                          size_t error_size) {
  std::vector<int> pieces;
  const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Encode(
      std::string(text, length), &pieces);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return -1;
  }
  for (size_t i = 0; i < pieces.size() && i < capacity; ++i) ids[i] = pieces[i];
  return static_cast<long>(pieces.size());
}

int difftrain_spm_eos_id(void* processor) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->eos_id();
}

int difftrain_spm_pad_id(void* processor) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->pad_id();
}

}  // extern "C"
