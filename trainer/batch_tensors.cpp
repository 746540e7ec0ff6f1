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

}  // namespace difftrain
