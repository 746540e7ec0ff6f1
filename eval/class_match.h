// Class match: does a generated image show its prompt's class? The
// generalisation of eval/colour_match to real data: a classifier trained on
// the data (eval/domain_features, `difftrain features --data`) classifies each
// image a manifest lists; the expected class is the prompt's, looked up in the
// classifier's caption table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/domain_features.h"

namespace difftrain::eval {

struct ClassMatchGroup {
  double guidance = 0;                   // the scale these entries share
  int64_t correct = 0, total = 0;
  double accuracy = 0;                   // correct / total
  std::vector<ClassAccuracy> per_class;  // (K) in class order; total 0 for classes no prompt asked for
};

struct ClassMatchResult {
  std::string classifier, manifest;
  std::vector<ClassMatchGroup> groups;  // one per guidance scale
};

// Reads the manifest (eval/manifest.h) and classifies every image it lists
// (grey PNGs arrive as three equal channels), in batches of up to batch_size
// images of one size. With `guidance` empty there is one group per distinct
// scale in the manifest, in increasing order; else one per listed scale.
// Throws std::runtime_error naming the culprit: a prompt not in the caption
// table (checked before any image is read), a missing image, a listed scale
// with no entries.
ClassMatchResult class_match(DomainClassifier& classifier, const std::string& manifest_path,
                             const std::vector<double>& guidance, int64_t batch_size = 64);

// {"classifier", "manifest", "groups": [{"guidance", "correct", "total",
// "accuracy", "per_class": [{"class", "correct", "total", "accuracy"}]}]};
// per_class lists only classes with total > 0, accuracy is null for an empty group.
std::string class_match_json(const ClassMatchResult& result);

}  // namespace difftrain::eval
