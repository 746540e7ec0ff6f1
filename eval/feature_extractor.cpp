#include "eval/feature_extractor.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <stdexcept>

#include "data/hdf5_util.h"
#include "data/shard_reader.h"
#include "eval/fid_stats_io.h"
#include "eval/image_io.h"
#include "eval/manifest.h"

namespace difftrain::eval {
namespace fs = std::filesystem;
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

// The images of a set, handed out in batches of one image size.
class BatchFeeder {
 public:
  BatchFeeder(FeatureExtractor& extractor, int64_t batch_size) : extractor_(extractor), batch_size_(batch_size) {}

  // hwc: (H, W, C) with C = 3, or C = 1 (grey, passed on as three equal channels)
  void add(const uint8_t* hwc, int64_t height, int64_t width, int64_t channels = 3) {
    if (pending_ > 0 && (height != height_ || width != width_)) flush();
    height_ = height;
    width_ = width;
    if (channels == 3) {
      pixels_.insert(pixels_.end(), hwc, hwc + height * width * 3);
    } else {
      for (int64_t i = 0; i < height * width; ++i) pixels_.insert(pixels_.end(), 3, hwc[i]);
    }
    if (++pending_ == batch_size_) flush();
  }

  void flush() {
    if (pending_ == 0) return;
    const torch::Tensor f = extractor_.features(unit_images(pixels_, pending_, height_, width_));  // (B, D)
    if (!stats_) stats_.emplace(f.size(1));
    stats_->add(f);
    pixels_.clear();
    pending_ = 0;
  }

  std::optional<FeatureStats>& stats() { return stats_; }

 private:
  FeatureExtractor& extractor_;
  const int64_t batch_size_;
  std::vector<uint8_t> pixels_;  // (pending, H, W, 3)
  int64_t pending_ = 0, height_ = 0, width_ = 0;
  std::optional<FeatureStats> stats_;
};

void feed_shards(const std::string& dir, int64_t limit, BatchFeeder& feeder) {
  const data::ImageGeometry geometry = data::shard_directory_geometry(dir);
  std::vector<uint8_t> image(static_cast<size_t>(geometry.bytes()));  // (H, W, C)
  int64_t seen = 0;
  for (const data::ShardInfo& info : data::open_shard_directory(dir, geometry)) {
    data::ShardReader reader(info);
    for (int64_t i = 0; i < reader.size() && (limit <= 0 || seen < limit); ++i, ++seen) {
      reader.read(i, image.data(), nullptr);
      feeder.add(image.data(), geometry.height, geometry.width, geometry.channels);
    }
  }
}

void feed_manifest(const std::string& manifest, int64_t limit, BatchFeeder& feeder) {
  const fs::path dir = fs::path(manifest).parent_path();
  int64_t seen = 0;
  for (const ManifestEntry& entry : read_manifest(manifest)) {
    if (limit > 0 && seen++ >= limit) break;
    const std::string file = (dir / entry.file).string();
    if (!fs::exists(file)) throw std::runtime_error("manifest " + manifest + " lists " + entry.file + ", which does not exist");
    const Image image = read_png(file);
    feeder.add(image.rgb.data(), image.height, image.width);
  }
}

std::string manifest_of(const std::string& path) {
  if (fs::is_directory(path) && fs::exists(fs::path(path) / "manifest.jsonl")) {
    return (fs::path(path) / "manifest.jsonl").string();
  }
  if (fs::is_regular_file(path) && fs::path(path).extension() == ".jsonl") return path;
  return "";
}

}  // namespace

FeatureExtractor::FeatureExtractor(const std::string& path, torch::Device device) : path_(path), device_(device) {
  const auto fail = [&](const std::string& what) {
    throw std::runtime_error("feature extractor '" + path + "': " + what + " (see docs/FID.md)");
  };
  if (!fs::exists(path)) fail("file does not exist");
  try {
    module_ = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    fail(std::string("cannot be loaded as TorchScript: ") + e.what_without_backtrace());
  }
  if (!module_.find_method("forward")) fail("has no forward method");
  module_.eval();
}

torch::Tensor FeatureExtractor::features(const torch::Tensor& images01) {
  if (images01.dim() != 4 || images01.size(1) != 3 || images01.size(0) < 1) {
    throw std::invalid_argument("FeatureExtractor::features: images have shape " + shape_of(images01) +
                                ", expected (B, 3, H, W) with B >= 1");
  }
  const auto fail = [&](const std::string& what) {
    throw std::runtime_error("feature extractor '" + path_ + "': " + what + " (see docs/FID.md)");
  };
  torch::NoGradGuard no_grad;
  const torch::Tensor x = images01.detach().to(device_, torch::kFloat32).contiguous();
  c10::IValue output;
  try {
    output = module_.forward({x});
  } catch (const c10::Error& e) {
    fail("forward failed on images " + shape_of(x) + ": " + e.what_without_backtrace());
  }
  if (!output.isTensor()) fail("forward returned a " + output.tagKind() + ", expected a (B, D) tensor");
  const torch::Tensor out = output.toTensor();
  if (out.dim() != 2 || out.size(0) != x.size(0)) {
    fail("forward returned a tensor of shape " + shape_of(out) + " for images " + shape_of(x) +
         ", expected (B, D) = (" + std::to_string(x.size(0)) + ", D)");
  }
  if (!out.is_floating_point()) fail("forward returned a non-floating tensor");
  if (dim_ != 0 && out.size(1) != dim_) {
    fail("forward returned " + std::to_string(out.size(1)) + " features, earlier " + std::to_string(dim_));
  }
  dim_ = out.size(1);
  return out.to(torch::kFloat32);
}

int64_t FeatureExtractor::dim(int64_t probe_height, int64_t probe_width) {
  if (dim_ == 0) features(torch::full({1, 3, probe_height, probe_width}, 0.5f));
  return dim_;
}

torch::Tensor unit_images(const std::vector<uint8_t>& hwc, int64_t batch, int64_t height, int64_t width) {
  if (batch < 1 || height < 1 || width < 1 ||
      static_cast<int64_t>(hwc.size()) != batch * height * width * 3) {
    throw std::invalid_argument("unit_images: " + std::to_string(hwc.size()) + " bytes for (B, H, W, 3) = (" +
                                std::to_string(batch) + ", " + std::to_string(height) + ", " +
                                std::to_string(width) + ", 3)");
  }
  // from_blob does not copy; the float conversion does, so hwc need not outlive the result.
  const torch::Tensor bytes =
      torch::from_blob(const_cast<uint8_t*>(hwc.data()), {batch, height, width, 3}, torch::kUInt8);
  return bytes.permute({0, 3, 1, 2}).to(torch::kFloat32).div_(255.0f).contiguous();
}

FeatureStats feature_stats_of_set(const std::string& path, FeatureExtractor& extractor, int64_t limit,
                                  int64_t batch_size) {
  if (batch_size < 1) throw std::invalid_argument("feature_stats_of_set: batch size must be >= 1");
  BatchFeeder feeder(extractor, batch_size);
  const std::string manifest = manifest_of(path);
  if (!manifest.empty()) {
    feed_manifest(manifest, limit, feeder);
  } else if (fs::is_directory(path)) {
    feed_shards(path, limit, feeder);
  } else {
    throw std::runtime_error("image set " + path +
                             (fs::exists(path) ? " is neither a shard directory, a sample folder with "
                                                 "manifest.jsonl, a manifest .jsonl nor FID statistics (.h5)"
                                               : " does not exist"));
  }
  feeder.flush();
  auto& stats = feeder.stats();
  const int64_t n = stats ? stats->count() : 0;
  if (n < 2) throw std::runtime_error("image set " + path + " has " + std::to_string(n) + " images; FID needs at least 2");
  return std::move(*stats);
}

GaussianStats gaussian_stats_of(const std::string& path, FeatureExtractor& extractor, int64_t limit,
                                int64_t batch_size) {
  if (is_gaussian_stats_file(path)) return load_gaussian_stats(path);
  const FeatureStats stats = feature_stats_of_set(path, extractor, limit, batch_size);
  return gaussian_of(stats, path + " (" + std::to_string(stats.count()) + " images, features " + extractor.path() + ")");
}

}  // namespace difftrain::eval
