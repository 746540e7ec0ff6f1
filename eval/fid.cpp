#include "eval/fid.h"

#include <cmath>
#include <stdexcept>
#include <utility>

namespace difftrain::eval {
namespace {

std::string shape_of(const torch::Tensor& t) {
  if (!t.defined()) return "(undefined)";
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

// Checks one side of frechet_distance; returns D.
int64_t checked_dim(const GaussianStats& g, const char* side) {
  const bool ok = g.mean.defined() && g.covariance.defined() && g.mean.dim() == 1 &&
                  g.covariance.dim() == 2 && g.covariance.size(0) == g.mean.size(0) &&
                  g.covariance.size(1) == g.mean.size(0) && g.mean.size(0) > 0;
  if (!ok) {
    throw std::invalid_argument(std::string("frechet_distance: statistics ") + side + " (" + g.source +
                                ") have mean " + shape_of(g.mean) + " and covariance " +
                                shape_of(g.covariance) + ", expected (D) and (D, D)");
  }
  return g.mean.size(0);
}

// √S of a symmetric positive semi-definite S (D, D) float64; the clamp drops the
// rounding-level negative eigenvalues a rank-deficient covariance has.
torch::Tensor psd_sqrt(const torch::Tensor& s) {
  auto [eigenvalues, eigenvectors] = torch::linalg_eigh(s);
  const torch::Tensor root = eigenvalues.clamp_min(0).sqrt();
  return torch::matmul(eigenvectors * root.unsqueeze(0), eigenvectors.transpose(0, 1));
}

}  // namespace

FeatureStats::FeatureStats(int64_t dim) : dim_(dim) {
  if (dim < 1) throw std::invalid_argument("FeatureStats: dimension must be >= 1, got " + std::to_string(dim));
  buffer_ = torch::zeros({1 + dim + dim * dim}, torch::kFloat64);
}

void FeatureStats::add(const torch::Tensor& features) {
  if (features.dim() != 2 || features.size(1) != dim_ || !features.is_floating_point()) {
    throw std::invalid_argument("FeatureStats::add: features have shape " + shape_of(features) +
                                (features.is_floating_point() ? "" : " and an integer dtype") +
                                ", expected floating (N, " + std::to_string(dim_) + ")");
  }
  if (features.size(0) == 0) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor x = features.detach().to(torch::kFloat64);  // (N, D), on its device
  buffer_[0] += static_cast<double>(x.size(0));
  buffer_.narrow(0, 1, dim_).add_(x.sum(0).cpu());
  buffer_.narrow(0, 1 + dim_, dim_ * dim_).add_(torch::matmul(x.t(), x).reshape({-1}).cpu());
}

int64_t FeatureStats::count() const { return static_cast<int64_t>(buffer_[0].item<double>()); }

torch::Tensor FeatureStats::mean() const {
  const int64_t n = count();
  if (n < 1) throw std::runtime_error("FeatureStats: mean of an empty set");
  return buffer_.narrow(0, 1, dim_) / static_cast<double>(n);
}

torch::Tensor FeatureStats::covariance() const {
  const int64_t n = count();
  if (n < 2) {
    throw std::runtime_error("FeatureStats: the covariance needs at least 2 feature vectors, got " +
                             std::to_string(n));
  }
  const torch::Tensor sum = buffer_.narrow(0, 1, dim_);                                  // (D)
  const torch::Tensor outer = buffer_.narrow(0, 1 + dim_, dim_ * dim_).view({dim_, dim_});  // (D, D)
  torch::Tensor c = (outer - torch::outer(sum, sum) / static_cast<double>(n)) / static_cast<double>(n - 1);
  return (c + c.t()) / 2;  // BLAS's xᵀx is symmetric only up to rounding
}

GaussianStats gaussian_of(const FeatureStats& stats, std::string source) {
  GaussianStats g;
  g.mean = stats.mean();
  g.covariance = stats.covariance();
  g.count = stats.count();
  g.source = std::move(source);
  return g;
}

double frechet_distance(const GaussianStats& a, const GaussianStats& b) {
  const int64_t da = checked_dim(a, "a"), db = checked_dim(b, "b");
  if (da != db) {
    throw std::invalid_argument("frechet_distance: feature dimensions differ: " + std::to_string(da) + " (" +
                                a.source + ") vs " + std::to_string(db) + " (" + b.source +
                                "); both sets need the same feature extractor");
  }
  torch::NoGradGuard no_grad;
  const auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); };
  const torch::Tensor mu1 = f64(a.mean), mu2 = f64(b.mean);
  const torch::Tensor s1 = f64(a.covariance), s2 = f64(b.covariance);
  for (const auto* t : {&mu1, &mu2, &s1, &s2}) {
    if (!torch::isfinite(*t).all().item<bool>()) {
      throw std::runtime_error("frechet_distance: statistics of '" + a.source + "' or '" + b.source +
                               "' contain NaN or infinity");
    }
  }
  const torch::Tensor root1 = psd_sqrt((s1 + s1.t()) / 2);
  torch::Tensor product = torch::matmul(torch::matmul(root1, s2), root1);  // √Σ₁ Σ₂ √Σ₁
  product = (product + product.t()) / 2;
  const double trace_covmean = torch::linalg_eigvalsh(product).clamp_min(0).sqrt().sum().item<double>();
  const torch::Tensor diff = mu1 - mu2;
  return diff.dot(diff).item<double>() + s1.trace().item<double>() + s2.trace().item<double>() -
         2 * trace_covmean;
}

}  // namespace difftrain::eval
