#include "model/frozen_text_encoder.h"

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "model/frozen_module.h"
#include "model/torchscript_error.h"

namespace difftrain::model {
namespace {

// Large enough for any real encoder's context, small enough that a garbage
// attribute cannot make the probe allocate gigabytes.
constexpr int64_t kMaxTokensLimit = 65536;

std::string shape_of(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + (t.dim() == 1 ? ",)" : ")");
}

}  // namespace

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot be read");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  if (in.bad()) throw std::runtime_error(path + ": read error");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

std::string sha256_of_identity(const std::string& identity) {
  const auto at = identity.find("sha256:");
  if (at == std::string::npos) return "";
  const auto end = identity.find(' ', at);
  return identity.substr(at + 7, end == std::string::npos ? std::string::npos : end - at - 7);
}

FrozenTextEncoder::FrozenTextEncoder(const std::string& path, std::unique_ptr<TextTokenizer> tokenizer)
    : path_(path), tokenizer_(std::move(tokenizer)) {
  const std::string what = "text encoder " + path + ": ";
  const auto fail = [&](const std::string& message) { return std::runtime_error(what + message); };
  FrozenModuleFile file = load_frozen_module(path, "text encoder");
  module_ = file.module;
  sha256_ = file.sha256;
  identity_ = file.identity;
  const size_t inputs = file.forward_inputs;
  if (inputs != 2) {
    throw fail("forward takes " + std::to_string(inputs) +
               " input(s), expected 2: tokens int64 (B, L) and mask bool (B, L)");
  }
  if (!module_.hasattr("max_tokens") || !module_.attr("max_tokens").isInt()) {
    throw fail("the module needs an int attribute 'max_tokens' (L, the tokens per caption)");
  }
  max_tokens_ = module_.attr("max_tokens").toInt();
  if (max_tokens_ < 1 || max_tokens_ > kMaxTokensLimit) {
    throw fail("attribute 'max_tokens' is " + std::to_string(max_tokens_) + ", expected 1.." +
               std::to_string(kMaxTokensLimit));
  }
  pad_id_ = tokenizer_->default_pad_id();
  if (module_.hasattr("pad_id")) {
    if (!module_.attr("pad_id").isInt() || module_.attr("pad_id").toInt() < 0) {
      throw fail("attribute 'pad_id' must be an int >= 0");
    }
    pad_id_ = module_.attr("pad_id").toInt();
  }
  // The probe's first caption is the empty one: its embedding is the null condition.
  const TextEmbeddingBatch probe = run({"", "a probe caption"}, "on a probe batch");
  width_ = probe.states.size(2);
  pooled_width_ = probe.pooled.size(1);
  null_ = {probe.states.slice(0, 0, 1).clone(), probe.mask.slice(0, 0, 1).clone(), probe.pooled.slice(0, 0, 1).clone()};
}

std::pair<torch::Tensor, torch::Tensor> FrozenTextEncoder::tokenize(const std::vector<std::string>& captions) const {
  const auto b = static_cast<int64_t>(captions.size());
  torch::Tensor tokens = torch::full({b, max_tokens_}, pad_id_, torch::kLong);  // (B, L)
  torch::Tensor mask = torch::zeros({b, max_tokens_}, torch::kUInt8);          // (B, L)
  auto token_rows = tokens.accessor<int64_t, 2>();
  auto mask_rows = mask.accessor<uint8_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const std::vector<int64_t> ids = tokenizer_->encode(captions[static_cast<size_t>(i)], max_tokens_);
    for (size_t j = 0; j < ids.size() && static_cast<int64_t>(j) < max_tokens_; ++j) {
      token_rows[i][static_cast<int64_t>(j)] = ids[j];
      mask_rows[i][static_cast<int64_t>(j)] = 1;
    }
  }
  return {tokens, mask};
}

TextEmbeddingBatch FrozenTextEncoder::encode(const std::vector<std::string>& captions) const {
  return run(captions, "on a batch of " + std::to_string(captions.size()) + " captions");
}

TextEmbeddingBatch FrozenTextEncoder::run(const std::vector<std::string>& captions, const std::string& when) const {
  const auto b = static_cast<int64_t>(captions.size());
  const std::string what = "text encoder " + path_ + ": ";
  const auto fail = [&](const std::string& message) { return std::runtime_error(what + message); };
  auto [tokens, mask] = tokenize(captions);
  torch::IValue output;
  try {
    torch::NoGradGuard no_grad;
    output = module_.forward({tokens, mask.to(torch::kBool)});
  } catch (const std::exception& e) {
    throw fail("forward failed " + when + " (tokens int64 (" + std::to_string(b) + ", " +
               std::to_string(max_tokens_) + "), mask bool): " + torchscript_error_line(e));
  }
  if (!output.isTuple() || output.toTuple()->elements().size() != 2 ||
      !output.toTuple()->elements()[0].isTensor() || !output.toTuple()->elements()[1].isTensor()) {
    throw fail("forward returned " + output.tagKind() + (output.isTuple() ? " of " + std::to_string(output.toTuple()->elements().size()) + " elements" : "") +
               ", expected a tuple (states (B, L, D), pooled (B, D'))");
  }
  const torch::Tensor states = output.toTuple()->elements()[0].toTensor();
  const torch::Tensor pooled = output.toTuple()->elements()[1].toTensor();
  const std::string l = std::to_string(max_tokens_), bs = std::to_string(b);
  if (states.dim() != 3 || states.size(0) != b || states.size(1) != max_tokens_ || states.size(2) < 1) {
    throw fail("forward " + when + " returned states of shape " + shape_of(states) + ", expected (B, L, D) = (" + bs +
               ", " + l + ", D) with L = max_tokens");
  }
  if (pooled.dim() != 2 || pooled.size(0) != b || pooled.size(1) < 1) {
    throw fail("forward " + when + " returned pooled of shape " + shape_of(pooled) + ", expected (B, D') = (" + bs + ", D')");
  }
  for (const auto& [name, t] : {std::pair{"states", states}, std::pair{"pooled", pooled}}) {
    if (!torch::isFloatingType(t.scalar_type())) {
      throw fail(std::string("forward ") + when + " returned " + name + " of dtype " +
                 std::string(c10::toString(t.scalar_type())) + ", expected a floating-point type");
    }
  }
  if (width_ > 0 && (states.size(2) != width_ || pooled.size(1) != pooled_width_)) {
    throw fail("forward " + when + " returned D = " + std::to_string(states.size(2)) + ", D' = " +
               std::to_string(pooled.size(1)) + ", but the probe gave D = " + std::to_string(width_) + ", D' = " +
               std::to_string(pooled_width_));
  }
  TextEmbeddingBatch result{states.to(torch::kFloat).contiguous(), mask, pooled.to(torch::kFloat).contiguous()};
  const torch::Tensor finite = torch::isfinite(result.states).flatten(1).all(1) & torch::isfinite(result.pooled).all(1);
  if (!finite.all().item<bool>()) {
    const int64_t row = (~finite).nonzero()[0][0].item<int64_t>();
    throw fail("forward " + when + " returned non-finite values (NaN or inf) for caption " + std::to_string(row) +
               " \"" + captions[static_cast<size_t>(row)].substr(0, 60) + "\"");
  }
  return result;
}

}  // namespace difftrain::model
