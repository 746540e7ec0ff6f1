// Fréchet distance between Gaussians fitted to feature sets (FID, Heusel et al.
// 2017, arXiv 1706.08500): FeatureStats (running float64 moments, mergeable
// across ranks), GaussianStats, frechet_distance. docs/FID.md describes the
// method and how it was checked against scipy.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace difftrain::eval {

// Running float64 sums of feature vectors. All state lives in one flat buffer,
// so the statistics of several ranks merge by summing their buffers (one
// all-reduce) and those of two sets by adding one buffer to the other.
// Raw (unshifted) moments: in float64 the covariance keeps about
// 16 - log10(|mean|² / variance) digits, plenty for features of order one.
class FeatureStats {
 public:
  explicit FeatureStats(int64_t dim);  // dim >= 1

  // features: (N, D), any floating dtype, any device. The product is formed
  // in float64 on the features' device and added to the CPU buffer.
  void add(const torch::Tensor& features);

  int64_t dim() const { return dim_; }
  int64_t count() const;
  // float64, CPU, (1 + D + D*D): [count, sum (D), sum of x xᵀ (D, D) row-major].
  // All-reduce (sum) it in place to merge ranks.
  torch::Tensor& buffer() { return buffer_; }
  const torch::Tensor& buffer() const { return buffer_; }

  torch::Tensor mean() const;        // (D) float64; throws std::runtime_error if count < 1
  torch::Tensor covariance() const;  // (D, D) float64, unbiased (N - 1); throws if count < 2

 private:
  int64_t dim_;
  torch::Tensor buffer_;  // (1 + D + D*D) float64
};

struct GaussianStats {
  torch::Tensor mean;        // (D) float64
  torch::Tensor covariance;  // (D, D) float64
  int64_t count = 0;         // N, the number of feature vectors it was fitted to
  std::string source;        // what it was computed from, for reports
};

GaussianStats gaussian_of(const FeatureStats& stats, std::string source);

// ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂), in float64. tr √(Σ₁Σ₂) is taken as
// tr √(√Σ₁ Σ₂ √Σ₁) (same eigenvalues, but symmetric): √Σ₁ from eigh(Σ₁) with
// eigenvalues clamped at 0, then the eigenvalues of the symmetrised product,
// clamped at 0. No non-symmetric eig, no Newton–Schulz (both give wrong
// answers for near-singular covariances, torch-fidelity#46, piq#381).
// Not clamped at 0 itself: identical inputs give 0 up to rounding (±1e-12 of the traces).
// Throws std::invalid_argument naming the shapes on a dimension mismatch, and
// std::runtime_error if the inputs are not finite.
double frechet_distance(const GaussianStats& a, const GaussianStats& b);

}  // namespace difftrain::eval
