#include "eval/feature_net.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "data/palette.h"
#include "data/synthetic_shapes.h"
#include "model/torchscript_export.h"

namespace difftrain::eval {
namespace F = torch::nn::functional;

namespace {

constexpr int64_t kFeatureDim = 128;

struct FeatureNetImpl : torch::nn::Module {
  explicit FeatureNetImpl(int64_t image_size) : size(image_size) {
    auto conv = [](int64_t in, int64_t out, int64_t stride) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1));
    };
    body = register_module("body", torch::nn::Sequential(conv(3, 32, 1), torch::nn::SiLU(), conv(32, 64, 2),
                                                         torch::nn::SiLU(), conv(64, 64, 1), torch::nn::SiLU(),
                                                         conv(64, 128, 2), torch::nn::SiLU()));
    // Flattening (not pooling) keeps where the shape is.
    fc = register_module("fc", torch::nn::Linear(128 * (size / 4) * (size / 4), kFeatureDim));
    colour_head = register_module("colour_head", torch::nn::Linear(kFeatureDim, data::palette().size()));
    shape_head = register_module("shape_head", torch::nn::Linear(kFeatureDim, data::shape_names().size()));
    geometry_head = register_module("geometry_head", torch::nn::Linear(kFeatureDim, 3));
  }
  // images01: (B, 3, H, W) in [0, 1] -> (B, 128)
  torch::Tensor features(const torch::Tensor& images01) {
    auto x = F::interpolate(images01, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{size, size})
                                          .mode(torch::kBilinear)
                                          .align_corners(false));
    return torch::silu(fc(body->forward(x * 2 - 1).flatten(1)));
  }
  int64_t size;
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear fc{nullptr}, colour_head{nullptr}, shape_head{nullptr}, geometry_head{nullptr};
};
TORCH_MODULE(FeatureNet);

struct LabelledBatch {
  torch::Tensor images;    // (B, 3, S, S) in [0, 1]
  torch::Tensor colour;    // (B) int64
  torch::Tensor shape;     // (B) int64
  torch::Tensor geometry;  // (B, 3): cx, cy, radius as fractions of the side
};

int64_t index_of(const std::string& name, const std::vector<std::string>& names) {
  return std::find(names.begin(), names.end(), name) - names.begin();
}

LabelledBatch render_batch(const data::SyntheticSpec& spec, int64_t first, int64_t count) {
  std::vector<std::string> colour_names;
  for (const auto& c : data::palette()) colour_names.push_back(c.name);
  const int64_t S = spec.image_size;
  std::vector<uint8_t> pixels(count * S * S * 3);
  std::vector<int64_t> colours, shapes;
  std::vector<float> geometry;
  for (int64_t i = 0; i < count; ++i) {
    const auto s = data::synthetic_sample(spec, first + i);
    data::render_shape(s.colour, s.shape, s.cx, s.cy, s.radius, S, pixels.data() + i * S * S * 3);
    colours.push_back(index_of(s.colour, colour_names));
    shapes.push_back(index_of(s.shape, data::shape_names()));
    for (double g : {s.cx, s.cy, s.radius}) geometry.push_back(static_cast<float>(g / S));
  }
  auto images = torch::from_blob(pixels.data(), {count, S, S, 3}, torch::kUInt8)
                    .permute({0, 3, 1, 2})
                    .to(torch::kFloat32)
                    .div(255.0)
                    .contiguous();
  return {images, torch::tensor(colours), torch::tensor(shapes), torch::tensor(geometry).view({count, 3})};
}

}  // namespace

FeatureNetReport train_feature_net(const FeatureNetOptions& o, const std::string& out_path) {
  if (o.image_size % 4 != 0 || o.image_size < 8)
    throw std::invalid_argument("feature net: image size " + std::to_string(o.image_size) +
                                " must be a multiple of 4, at least 8");
  torch::set_num_threads(static_cast<int>(o.threads));
  torch::manual_seed(static_cast<int64_t>(o.seed));
  FeatureNet net(o.image_size);
  torch::optim::AdamW optimizer(net->parameters(), torch::optim::AdamWOptions(o.lr));
  // Rendered on the fly from seeds the diffusion model's shards never use.
  const data::SyntheticSpec train_spec{1 << 30, o.image_size, 4096, o.seed * 7919 + 17};
  const data::SyntheticSpec held_out_spec{1 << 30, o.image_size, 4096, o.seed * 7919 + 18};
  net->train();
  for (int64_t step = 0; step < o.steps; ++step) {
    const auto b = render_batch(train_spec, step * o.batch_size, o.batch_size);
    auto h = net->features(b.images);
    auto loss = F::cross_entropy(net->colour_head(h), b.colour) + F::cross_entropy(net->shape_head(h), b.shape) +
                10.0 * F::mse_loss(net->geometry_head(h), b.geometry);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if ((step + 1) % 250 == 0) spdlog::info("feature net: step {}/{} loss {:.4f}", step + 1, o.steps, loss.item<double>());
  }

  net->eval();
  torch::NoGradGuard no_grad;
  const auto v = render_batch(held_out_spec, 0, 2048);
  auto h = net->features(v.images);
  FeatureNetReport report;
  report.colour_accuracy = (net->colour_head(h).argmax(1) == v.colour).to(torch::kFloat64).mean().item<double>();
  report.shape_accuracy = (net->shape_head(h).argmax(1) == v.shape).to(torch::kFloat64).mean().item<double>();
  auto centre_error = (net->geometry_head(h) - v.geometry).slice(1, 0, 2) * static_cast<double>(o.image_size);
  report.centre_rmse_pixels = centre_error.pow(2).mean().sqrt().item<double>();
  report.feature_dim = kFeatureDim;

  model::export_torchscript(
      *net, "ShapeFeatures", [&](const std::vector<torch::Tensor>& in) { return net->features(in[0]); },
      {torch::rand({2, 3, o.image_size, o.image_size})}, {}, out_path);
  return report;
}

}  // namespace difftrain::eval
