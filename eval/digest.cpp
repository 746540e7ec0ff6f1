#include "eval/digest.h"

#include <openssl/evp.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

namespace difftrain::eval {

struct Sha256::State {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : state_(std::make_unique<State>()) {
  state_->ctx = EVP_MD_CTX_new();
  if (!state_->ctx || EVP_DigestInit_ex(state_->ctx, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL could not start a SHA-256 digest");
}

Sha256::~Sha256() { EVP_MD_CTX_free(state_->ctx); }

Sha256& Sha256::bytes(const void* data, size_t size) {
  if (size > 0 && EVP_DigestUpdate(state_->ctx, data, size) != 1)
    throw std::runtime_error("OpenSSL SHA-256 update failed");
  return *this;
}

Sha256& Sha256::text(const std::string& s) {
  integer(static_cast<int64_t>(s.size()));
  return bytes(s.data(), s.size());
}

Sha256& Sha256::integer(int64_t v) { return bytes(&v, sizeof(v)); }

Sha256& Sha256::number(double v) { return bytes(&v, sizeof(v)); }

Sha256& Sha256::tensor(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU).contiguous();
  text(c10::toString(c.scalar_type()));
  integer(c.dim());
  for (int64_t d : c.sizes()) integer(d);
  return bytes(c.data_ptr(), c.numel() * c.element_size());
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(state_->ctx, digest, &length) != 1) throw std::runtime_error("OpenSSL SHA-256 final failed");
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) out += digits[digest[i] >> 4], out += digits[digest[i] & 15];
  return out;
}

std::string sha256_of_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path + " to compute its SHA-256");
  Sha256 h;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    h.bytes(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw std::runtime_error("read error in " + path + " while computing its SHA-256");
  return h.hex();
}

std::string sha256_of_module(torch::nn::Module& module) {
  Sha256 h;
  for (const auto& p : module.named_parameters()) h.text(p.key()).tensor(p.value());
  for (const auto& b : module.named_buffers()) h.text(b.key()).tensor(b.value());
  return h.hex();
}

}  // namespace difftrain::eval
