#include "trainer/autoencoder_export.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <stdexcept>

#include "data/shard_reader.h"
#include "model/torchscript_export.h"
#include "trainer/autoencoder_trainer.h"
#include "trainer/batch_tensors.h"
#include "trainer/training_loop_parts.h"

namespace difftrain {
namespace {

using Clock = std::chrono::steady_clock;

// The first `limit` images (0: all) of a shard directory in file order, in batches of at most
// `batch_size`, each (B, C, H, W) float32 in [-1, 1]. Returns the number of images.
int64_t for_each_image_batch(const std::string& dir, const data::ImageGeometry& geometry, int64_t limit,
                             int64_t batch_size, const std::function<void(const torch::Tensor&)>& fn) {
  if (batch_size < 1) throw std::invalid_argument("batch size " + std::to_string(batch_size) + ": expected >= 1");
  const auto shards = data::open_shard_directory(dir, geometry);
  std::vector<uint8_t> buffer(static_cast<size_t>(batch_size * geometry.bytes()));
  int64_t total = 0, pending = 0;
  const auto flush = [&] {
    if (pending == 0) return;
    fn(images_to_tensor(std::vector<uint8_t>(buffer.begin(), buffer.begin() + pending * geometry.bytes()), pending,
                        geometry.height, geometry.width, geometry.channels));
    pending = 0;
  };
  for (const auto& shard : shards) {
    data::ShardReader reader(shard);
    for (int64_t i = 0; i < reader.size() && (limit == 0 || total < limit); ++i, ++total) {
      reader.read(i, buffer.data() + pending * geometry.bytes(), nullptr);
      if (++pending == batch_size) flush();
    }
  }
  flush();
  return total;
}

}  // namespace

LoadedAutoencoder load_autoencoder(const std::string& path) {
  LoadedAutoencoder a;
  a.dir = resolve_checkpoint(path);
  if (!is_autoencoder_checkpoint(a.dir))
    throw CheckpointError("checkpoint '" + a.dir + "' holds a diffusion model (`difftrain train`), not an autoencoder "
                          "(`difftrain autoencoder train`)");
  a.config = parse_saved_config(read_checkpoint_config(a.dir), a.dir + "/config.yaml", nullptr, nullptr);
  a.state = read_training_state(a.dir);
  a.net = model::AutoencoderKL(autoencoder_options_from(a.config));
  load_ema_weights(a.dir, *a.net);
  a.net->eval();
  return a;
}

AutoencoderExportResult export_autoencoder(const AutoencoderExportOptions& options) {
  if (options.scale_samples < 2)
    throw std::invalid_argument("--scale-samples " + std::to_string(options.scale_samples) +
                                ": expected at least 2 images to measure the latents' standard deviation");
  if (options.encoder_path.empty() || options.decoder_path.empty() || options.encoder_path == options.decoder_path)
    throw std::invalid_argument("--encoder and --decoder must name two different files");
  auto a = load_autoencoder(options.checkpoint);
  const auto& o = a.net->options;
  AutoencoderExportResult r;
  r.checkpoint = a.dir;
  r.latent_channels = o.latent_channels;
  r.downsample_factor = model::downsample_factor(o);
  r.image_channels = o.image_channels;
  r.image_size = a.config.data.image_size;

  // latent_scale: LDM's recipe, 1 / std of the (unscaled) latents the encoder gives.
  const std::string data_dir = options.scale_data.empty() ? a.config.data.dir : options.scale_data;
  std::vector<torch::Tensor> latents;
  {
    torch::NoGradGuard no_grad;
    r.scale_images = for_each_image_batch(data_dir, image_geometry_of(a.config), options.scale_samples,
                                          options.batch_size,
                                          [&](const torch::Tensor& x) { latents.push_back(a.net->encode(x).mean); });
  }
  if (r.scale_images < 2)
    throw std::runtime_error("shards in " + data_dir + " hold " + std::to_string(r.scale_images) +
                             " image(s): at least 2 are needed to measure the latents' standard deviation");
  const auto z = torch::cat(latents).to(torch::kFloat64);
  r.latent_mean = z.mean().item<double>();
  r.latent_std = z.std().item<double>();
  if (!std::isfinite(r.latent_std) || r.latent_std <= 0)
    throw std::runtime_error("the encoder's latents of " + std::to_string(r.scale_images) + " images in " + data_dir +
                             " have standard deviation " + std::to_string(r.latent_std) +
                             ": no latent_scale can be derived (is the checkpoint trained?)");
  r.latent_scale = 1.0 / r.latent_std;
  r.latent_shift = 0;

  const std::vector<model::TracedAttribute> attributes = {
      {"latent_scale", r.latent_scale},
      {"latent_shift", r.latent_shift},
      {"latent_channels", r.latent_channels},
      {"downsample_factor", r.downsample_factor},
      {"image_channels", r.image_channels}};
  const int64_t H = r.image_size, C = r.image_channels, h = H / r.downsample_factor;
  auto encoder = a.net->encoder;
  auto decoder = a.net->decoder;
  model::export_torchscript(
      *encoder, "AutoencoderEncoder",
      [&](const std::vector<torch::Tensor>& in) { return encoder->forward(in[0]).chunk(2, 1)[0]; },
      {torch::rand({2, C, H, H}) * 2 - 1}, {}, attributes, options.encoder_path);
  model::export_torchscript(
      *decoder, "AutoencoderDecoder", [&](const std::vector<torch::Tensor>& in) { return decoder->forward(in[0]); },
      {torch::randn({2, r.latent_channels, h, h})}, {}, attributes, options.decoder_path);
  return r;
}

ReconstructionReport evaluate_autoencoder(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
                                          int64_t batch_size) {
  if (limit < 0) throw std::invalid_argument("--limit " + std::to_string(limit) + ": expected 0 (all) or a positive count");
  auto a = load_autoencoder(checkpoint);
  ReconstructionReport r;
  r.checkpoint = a.dir;
  double psnr_sum = 0;
  torch::NoGradGuard no_grad;
  r.images = for_each_image_batch(data_dir, image_geometry_of(a.config), limit, batch_size, [&](const torch::Tensor& x) {
    const auto start = Clock::now();
    const auto reconstruction = a.net->decode(a.net->encode(x).mean);
    r.seconds += std::chrono::duration<double>(Clock::now() - start).count();
    psnr_sum += model::psnr_db(x, reconstruction).sum().item<double>();
  });
  if (r.images == 0) throw std::runtime_error("shards in " + data_dir + " hold no image");
  r.psnr_db = psnr_sum / static_cast<double>(r.images);
  r.images_per_second = r.seconds > 0 ? static_cast<double>(r.images) / r.seconds : 0;
  return r;
}

}  // namespace difftrain
