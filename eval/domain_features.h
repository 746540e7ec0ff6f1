// A feature extractor and classifier for any labelled shard directory
// (docs/FID.md, "Domain feature extractor"). Datasets without Inception
// weights get their own FID feature space: a small CNN trained here to
// classify the dataset's images, whose penultimate layer is the feature.
//
// Classes come from the shards' optional int64 `labels` dataset (names from
// the `label_names` root attribute), or else each distinct caption is a class.
// The exported TorchScript file (written by train_domain_features, read by
// DomainClassifier) is a FeatureExtractor (eval/feature_extractor.h) and more:
//   forward(images: float32 (B, 3, H, W) in [0, 1]) -> (B, 256)   = features()
//   classify(images)                               -> (B, K) logits
//   attributes  image_size: int, in_channels: int (1 grey, 3 RGB),
//               class_names: List[str] (K), caption_classes: Dict[str, int],
//               label_source: str ("labels" | "captions"),
//               training_report: str (JSON: data, options, held-out accuracy)
// Inputs of any size are resized bilinearly to image_size; a grey-trained net
// takes the mean of three channels (grey images reach extractors as three
// equal channels) and accepts (B, 1, H, W) too.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace difftrain::eval {

enum class LabelSource {
  kAuto,      // the `labels` dataset when every shard has one, else captions
  kCaptions,  // each distinct caption is a class (at most kMaxCaptionClasses)
  kColumn,    // the `labels` dataset; a shard without one is an error
};
// "auto" | "captions" | "column"; throws std::invalid_argument naming the word.
LabelSource parse_label_source(const std::string& word);

// More distinct captions than this are not classes but descriptions: such a
// set needs a `labels` dataset.
inline constexpr int64_t kMaxCaptionClasses = 1000;
// Training size when --image-size is not given: the shards' side, capped so
// that CPU training stays in minutes.
inline constexpr int64_t kDefaultMaxTrainingSize = 64;

struct DomainFeatureOptions {
  std::string data_dir;     // shard directory (docs/SHARD_FORMAT.md)
  std::string holdout_dir;  // "" = hold out kHoldoutFraction of data_dir
  LabelSource labels = LabelSource::kAuto;
  int64_t image_size = 0;   // 0: min(H, W) of the shards, at most kDefaultMaxTrainingSize
  int64_t steps = 2000;
  int64_t batch_size = 64;
  double lr = 2e-3;         // AdamW, cosine decay to 0
  uint64_t seed = 7;        // initialisation, split, batch order, augmentation
  int64_t threads = 2;
  bool augment = true;      // random shifts of up to image_size / 16 pixels
};

inline constexpr double kHoldoutFraction = 0.1;

struct ClassAccuracy {
  std::string name;
  int64_t correct = 0, total = 0;
};

struct DomainFeatureReport {
  std::string label_source;  // "labels" or "captions"
  int64_t classes = 0, feature_dim = 0, image_size = 0, channels = 0;
  int64_t train_images = 0, holdout_images = 0;
  // Held-out images whose caption names no training class (captions only,
  // --holdout-data only); they are not counted.
  int64_t holdout_skipped = 0;
  double holdout_accuracy = 0;
  std::vector<ClassAccuracy> per_class;  // (K) in class order; total 0 when absent from the held-out set
  double final_loss = 0;                 // mean training loss of the last 50 steps
  // Largest |difference| of features and logits between the trained network
  // and the saved file reloaded, on held-out images (checked < 1e-3).
  double export_max_difference = 0;
};

// Trains, evaluates on the held-out images, writes `out_path` (temp + rename)
// and checks the reloaded file. Deterministic given the options (and thread
// count). Throws std::runtime_error / data::ShardError naming the directory,
// shard or caption count at fault.
DomainFeatureReport train_domain_features(const DomainFeatureOptions& options, const std::string& out_path);

// A classifier file written by train_domain_features (or anything with the
// same methods and attributes, e.g. scripted in Python), loaded on CPU.
class DomainClassifier {
 public:
  // Throws std::runtime_error naming the file if it is missing, not
  // TorchScript, or lacks classify / class_names / caption_classes.
  explicit DomainClassifier(const std::string& path);

  // images01: (B, 3, H, W) in [0, 1] -> (B, D) / (B, K) float32, without autograd.
  torch::Tensor features(const torch::Tensor& images01);
  torch::Tensor classify(const torch::Tensor& images01);

  const std::string& path() const { return path_; }
  const std::vector<std::string>& class_names() const { return class_names_; }
  const std::map<std::string, int64_t>& caption_classes() const { return caption_classes_; }
  // Throws std::runtime_error naming the caption when the table lacks it.
  int64_t class_of_caption(const std::string& caption) const;

 private:
  torch::Tensor call(const char* method, const torch::Tensor& images01, int64_t expected_columns);

  std::string path_;
  torch::jit::Module module_;
  std::vector<std::string> class_names_;             // (K)
  std::map<std::string, int64_t> caption_classes_;  // caption -> [0, K)
};

}  // namespace difftrain::eval
