// FeatureExtractor (a TorchScript network that maps images to feature vectors),
// unit_images, and the feature statistics of an image set: a shard directory,
// or a sample folder / manifest.jsonl written by `difftrain sample`.
// The extractor contract is in docs/FID.md; eval/export_inception.py makes one
// from Inception-v3 weights.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "eval/fid.h"

namespace difftrain::eval {

// forward(images: float32 (B, 3, H, W) in [0, 1]) -> float32 (B, D). The module
// resizes and normalises as it needs, so any H, W is accepted.
class FeatureExtractor {
 public:
  // Loads the module onto `device`. Throws std::runtime_error naming the file if
  // it is missing or is not a loadable TorchScript module with a forward method.
  explicit FeatureExtractor(const std::string& path, torch::Device device = torch::kCPU);

  // images01: (B, 3, H, W) in [0, 1], any floating dtype and device -> (B, D)
  // float32 on device(), without autograd. Throws std::runtime_error naming the
  // file if the output is not a (B, D) tensor, or D changes between calls.
  torch::Tensor features(const torch::Tensor& images01);

  // D: from the first features() call, or, before one, from a probe forward of a
  // (1, 3, probe_height, probe_width) grey image.
  int64_t dim(int64_t probe_height = kProbeSize, int64_t probe_width = kProbeSize);

  const std::string& path() const { return path_; }
  torch::Device device() const { return device_; }

  static constexpr int64_t kProbeSize = 64;

 private:
  std::string path_;
  torch::jit::Module module_;
  torch::Device device_;
  int64_t dim_ = 0;                     // 0 until known
};

// hwc: (B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1] (a copy).
torch::Tensor unit_images(const std::vector<uint8_t>& hwc, int64_t batch, int64_t height, int64_t width);

// The feature statistics of an image set, read in file order, batches of batch_size:
//  - a directory of shards (docs/SHARD_FORMAT.md): geometry from the first shard,
//    every image of every shard by file name;
//  - a sample folder holding manifest.jsonl, or a manifest.jsonl itself: every PNG
//    it lists (a batch is cut short where the image size changes).
// limit > 0 keeps the first `limit` images only. Throws std::runtime_error (or
// data::ShardError) naming the path when the set cannot be read or has < 2 images.
FeatureStats feature_stats_of_set(const std::string& path, FeatureExtractor& extractor, int64_t limit,
                                  int64_t batch_size);

// A stats .h5 (is_gaussian_stats_file) is loaded as it is (limit and extractor
// unused); anything else goes through feature_stats_of_set. source records the
// set, its size and the extractor.
GaussianStats gaussian_stats_of(const std::string& path, FeatureExtractor& extractor, int64_t limit,
                                int64_t batch_size);

}  // namespace difftrain::eval
