// SHA-256 digests (OpenSSL EVP) of what makes an evaluation result: model
// files, weights, prompt lists, statistics. Used to key FID sweep points by
// their inputs (eval/fid_sweep) and to name a denoiser's identity
// (eval/denoiser_source). Defines: Sha256, sha256_of_file.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace difftrain::eval {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& bytes(const void* data, size_t size);
  // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
  Sha256& text(const std::string& s);
  Sha256& integer(int64_t v);
  Sha256& number(double v);  // the bit pattern; -0.0 and 0.0 differ
  // dtype, shape and the contiguous CPU bytes.
  Sha256& tensor(const torch::Tensor& t);
  std::string hex();  // lowercase, 64 characters; ends the digest

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Throws std::runtime_error naming the file when it cannot be read.
std::string sha256_of_file(const std::string& path);

// Every parameter and buffer, by name, in registration order.
std::string sha256_of_module(torch::nn::Module& module);

}  // namespace difftrain::eval
