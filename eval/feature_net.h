// The built-in FID feature extractor for the synthetic captioned-shapes data.
// No Inception weights can be downloaded here, so difftrain trains its own
// small CNN on freshly rendered shapes to predict colour (8 classes), shape
// (3 classes) and the shape's centre and size; its 128-d penultimate layer is
// the feature space. It is exported in the FeatureExtractor TorchScript form
// (eval/feature_extractor.h): forward(images: float32[B,3,H,W] in [0,1]) -> [B,128],
// resizing to the size it was trained at. It measures what this dataset varies
// in, so FIDs computed with it compare samplers and checkpoints on this data;
// they are not comparable with Inception FIDs.
#pragma once

#include <cstdint>
#include <string>

namespace difftrain::eval {

struct FeatureNetOptions {
  int64_t image_size = 16;
  int64_t steps = 1500;
  int64_t batch_size = 64;
  double lr = 2e-3;
  uint64_t seed = 7;
  int64_t threads = 2;
};

struct FeatureNetReport {
  double colour_accuracy = 0, shape_accuracy = 0;  // on 2048 held-out rendered images
  double centre_rmse_pixels = 0;
  int64_t feature_dim = 0;
};

FeatureNetReport train_feature_net(const FeatureNetOptions& options, const std::string& out_path);

}  // namespace difftrain::eval
