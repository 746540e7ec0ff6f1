// Turns a loader batch (uint8 HWC images, caption strings) into model inputs.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "data/shard_format.h"
#include "model/unet.h"

namespace difftrain {

// images: (B, H, W, C) uint8 -> (B, C, H, W) float32 in [-1, 1]
torch::Tensor images_to_tensor(const std::vector<uint8_t>& images, int64_t batch, int64_t height, int64_t width,
                               int64_t channels);
// (B, C, H, W) float in [-1, 1] -> (B, H, W, C) uint8, rounded and clamped
std::vector<uint8_t> tensor_to_images(const torch::Tensor& images);
// captions -> (B, L) int64 tokens (model/tokenizer.h)
torch::Tensor tokenize_batch(const std::vector<std::string>& captions, int64_t max_tokens);

// float16 bits (as stored in shards) -> float32 tensor of `shape`.
torch::Tensor half_bits_to_float(const std::vector<uint16_t>& bits, const std::vector<int64_t>& shape);

// A loader batch's latents (B, c, h, w) as the model's input: z = (latents - shift) * scale
// (docs/LATENTS.md), float32.
torch::Tensor latents_to_tensor(const std::vector<uint16_t>& bits, int64_t batch, const data::LatentInfo& latents);

// One precomputed text embedding per sample or the null condition (batch 1), as the
// loader and ShardReader::read_text_null give them: states (B, L, D) and pooled (B, D')
// float16 bits (pooled empty when shape.pooled_width is 0), mask (B, L) 1 = real token.
struct TextEmbeddingBits {
  std::vector<uint16_t> states;
  std::vector<uint8_t> mask;
  std::vector<uint16_t> pooled;
};

// The UNet's Conditioning of a batch of B precomputed embeddings (float32 context and
// pooled, bool mask), where the samples with drop[k] (condition dropout, (B) bool) get
// the null condition in all three fields. null holds one sample.
model::Conditioning precomputed_conditioning(const TextEmbeddingBits& batch, int64_t B,
                                             const data::TextEmbeddingShape& shape, const TextEmbeddingBits& null,
                                             const torch::Tensor& drop);

}  // namespace difftrain
