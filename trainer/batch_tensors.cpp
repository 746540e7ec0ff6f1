#include "trainer/batch_tensors.h"

#include <torch/torch.h>

#include "model/tokenizer.h"

namespace difftrain {

torch::Tensor images_to_tensor(const std::vector<uint8_t>& images, int64_t batch, int64_t height, int64_t width,
                               int64_t channels) {
  TORCH_CHECK(static_cast<int64_t>(images.size()) == batch * height * width * channels, "image buffer has ",
              images.size(), " bytes, expected ", batch * height * width * channels);
  auto hwc = torch::from_blob(const_cast<uint8_t*>(images.data()), {batch, height, width, channels}, torch::kUInt8);
  return hwc.permute({0, 3, 1, 2}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

std::vector<uint8_t> tensor_to_images(const torch::Tensor& images) {
  auto hwc = images.detach()
                 .to(torch::kCPU, torch::kFloat32)
                 .add(1.0)
                 .mul(127.5)
                 .round()
                 .clamp(0, 255)
                 .to(torch::kUInt8)
                 .permute({0, 2, 3, 1})
                 .contiguous();
  const auto* p = hwc.data_ptr<uint8_t>();
  return std::vector<uint8_t>(p, p + hwc.numel());
}

torch::Tensor tokenize_batch(const std::vector<std::string>& captions, int64_t max_tokens) {
  std::vector<int64_t> ids;
  ids.reserve(captions.size() * max_tokens);
  for (const auto& c : captions) {
    auto t = model::tokenize(c, max_tokens);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  return torch::tensor(ids, torch::kInt64).view({static_cast<int64_t>(captions.size()), max_tokens});
}

torch::Tensor half_bits_to_float(const std::vector<uint16_t>& bits, const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  TORCH_CHECK(static_cast<int64_t>(bits.size()) == count, "float16 buffer has ", bits.size(), " values, expected ",
              count);
  return torch::from_blob(const_cast<uint16_t*>(bits.data()), shape, torch::kHalf).to(torch::kFloat32);
}

torch::Tensor latents_to_tensor(const std::vector<uint16_t>& bits, int64_t batch, const data::LatentInfo& latents) {
  const data::LatentShape& s = latents.shape;
  TORCH_CHECK(static_cast<int64_t>(bits.size()) == batch * s.values(), "latent buffer has ", bits.size(),
              " values, expected ", batch * s.values());
  const auto dtype = s.dtype == data::LatentDtype::kFloat16 ? torch::kHalf : torch::kBFloat16;
  const torch::Tensor raw =
      torch::from_blob(const_cast<uint16_t*>(bits.data()), {batch, s.channels, s.height, s.width}, dtype);
  return (raw.to(torch::kFloat32) - latents.shift) * latents.scale;
}

namespace {
torch::Tensor mask_tensor(const std::vector<uint8_t>& mask, int64_t B, int64_t L) {
  TORCH_CHECK(static_cast<int64_t>(mask.size()) == B * L, "text mask has ", mask.size(), " values, expected ", B * L);
  return torch::from_blob(const_cast<uint8_t*>(mask.data()), {B, L}, torch::kUInt8).to(torch::kBool);
}
}  // namespace

model::Conditioning precomputed_conditioning(const TextEmbeddingBits& batch, int64_t B,
                                             const data::TextEmbeddingShape& shape, const TextEmbeddingBits& null,
                                             const torch::Tensor& drop) {
  const int64_t L = shape.tokens, D = shape.width, P = shape.pooled_width;
  TORCH_CHECK(drop.dim() == 1 && drop.size(0) == B, "condition dropout draws: expected (", B, "), got ", drop.sizes());
  const auto dropped = drop.to(torch::kBool);
  model::Conditioning c;
  c.context = torch::where(dropped.view({B, 1, 1}), half_bits_to_float(null.states, {1, L, D}),
                           half_bits_to_float(batch.states, {B, L, D}));
  c.mask = torch::where(dropped.view({B, 1}), mask_tensor(null.mask, 1, L), mask_tensor(batch.mask, B, L));
  if (P > 0)
    c.pooled = torch::where(dropped.view({B, 1}), half_bits_to_float(null.pooled, {1, P}),
                            half_bits_to_float(batch.pooled, {B, P}));
  return c;
}

}  // namespace difftrain
