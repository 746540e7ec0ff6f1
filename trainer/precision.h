// Mixed precision: fp32, bf16 autocast, or fp16 autocast with dynamic loss
// scaling (trainer/loss_scaler.h). Master weights and optimizer state stay fp32.
#pragma once

#include <torch/types.h>

#include <string>

namespace difftrain {

enum class Precision { kFp32, kBf16, kFp16 };
Precision parse_precision(const std::string& name);

// Enables autocast for the forward pass on `device` for its lifetime.
class AutocastScope {
 public:
  AutocastScope(Precision precision, const torch::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
};

}  // namespace difftrain
