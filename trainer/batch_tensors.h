// Turns a loader batch (uint8 HWC images, caption strings) into model inputs.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace difftrain {

// images: (B, H, W, C) uint8 -> (B, C, H, W) float32 in [-1, 1]
torch::Tensor images_to_tensor(const std::vector<uint8_t>& images, int64_t batch, int64_t height, int64_t width,
                               int64_t channels);
// (B, C, H, W) float in [-1, 1] -> (B, H, W, C) uint8, rounded and clamped
std::vector<uint8_t> tensor_to_images(const torch::Tensor& images);
// captions -> (B, L) int64 tokens (model/tokenizer.h)
torch::Tensor tokenize_batch(const std::vector<std::string>& captions, int64_t max_tokens);

}  // namespace difftrain
