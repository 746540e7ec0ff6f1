#include "cli/encode_images_command.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "cli/fail.h"
#include "cli/shard_pass.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"
#include "distributed/communicator.h"
#include "distributed/mpi_session.h"
#include "model/frozen_text_encoder.h"
#include "model/frozen_vae.h"
#include "trainer/batch_tensors.h"

namespace difftrain::cli {
namespace {

// What the shards' latents will be: the encoder's output shape, dtype, identity, scale and shift.
data::LatentInfo target_latents(const model::FrozenVae& encoder, const EncodeImagesCommand& command) {
  data::LatentInfo info;
  const auto& out = encoder.output_shape();
  if (out.size() != 3) throw std::runtime_error("VAE encoder: expected (c, h, w) latents per image");
  info.shape = {out[0], out[1], out[2], command.dtype == "bfloat16" ? data::LatentDtype::kBfloat16 : data::LatentDtype::kFloat16};
  info.encoder = encoder.identity();
  if (command.latent_scale > 0) {
    info.scale = command.latent_scale;
  } else if (encoder.latent_scale()) {
    info.scale = *encoder.latent_scale();
  } else {
    throw std::invalid_argument("VAE encoder " + command.encoder_path + " has no 'latent_scale' attribute: pass "
                                "--latent-scale (1 / the std of its latents; Stable Diffusion's VAE: 0.18215)");
  }
  info.shift = command.latent_shift_given ? command.latent_shift : encoder.latent_shift().value_or(0.0);
  return info;
}

// Whether a shard must be encoded: no latents yet, or --overwrite. One that already
// holds these latents (same encoder SHA-256, shape, dtype, scale and shift) is kept;
// other latents are an error without --overwrite. Checked for every shard on every
// rank before anything is written, so a refusal changes no file.
bool needs_encoding(const data::ShardInfo& shard, const data::LatentInfo& target, bool overwrite) {
  if (!shard.latents) return true;
  const data::LatentInfo& have = *shard.latents;
  const bool same = model::sha256_of_identity(have.encoder) == model::sha256_of_identity(target.encoder) &&
                    have.shape == target.shape && have.scale == target.scale && have.shift == target.shift;
  if (same && !overwrite) return false;
  if (!same && !overwrite) {
    char numbers[128];
    std::snprintf(numbers, sizeof numbers, " (scale %.9g, shift %.9g), not %.9g, %.9g", have.scale, have.shift,
                  target.scale, target.shift);
    throw std::runtime_error("shard " + shard.path + ": has latents " + data::to_string(have.shape) + " from encoder \"" +
                             have.encoder + "\"" + numbers + " " + data::to_string(target.shape) + " from \"" +
                             target.encoder + "\"; pass --overwrite to replace them");
  }
  return true;
}

// float32 -> 16-bit float bits of `dtype`, round to nearest even.
void append_bits(const torch::Tensor& values, data::LatentDtype dtype, std::vector<uint16_t>* out) {
  const torch::Tensor bits =
      values.to(dtype == data::LatentDtype::kFloat16 ? torch::kHalf : torch::kBFloat16).contiguous();
  const size_t start = out->size();
  out->resize(start + static_cast<size_t>(bits.numel()));
  std::memcpy(out->data() + start, bits.data_ptr(), static_cast<size_t>(bits.numel()) * sizeof(uint16_t));
}

data::Latents encode_shard(const data::ShardInfo& shard, const model::FrozenVae& encoder, const data::LatentInfo& target,
                           int64_t batch_size, const std::function<void(int64_t)>& on_images) {
  data::ShardReader reader(shard);
  const data::ImageGeometry& g = shard.geometry;
  data::Latents out;
  out.info = target;
  out.count = shard.count;
  out.values.reserve(static_cast<size_t>(shard.count * target.shape.values()));
  std::vector<uint8_t> images;
  for (int64_t start = 0; start < shard.count; start += batch_size) {
    const int64_t b = std::min(batch_size, shard.count - start);
    images.resize(static_cast<size_t>(b * g.bytes()));
    for (int64_t i = 0; i < b; ++i) reader.read(start + i, images.data() + i * g.bytes(), nullptr);
    const torch::Tensor latents = encoder.run(images_to_tensor(images, b, g.height, g.width, g.channels));
    append_bits(latents, target.shape.dtype, &out.values);
    on_images(b);
  }
  return out;
}

}  // namespace

std::unique_ptr<EncodeImagesCommand> add_encode_images_command(CLI::App& app) {
  auto c = std::make_unique<EncodeImagesCommand>();
  auto* cmd = app.add_subcommand("encode-images",
                                 "add VAE latents from a frozen TorchScript encoder to every shard (latent diffusion)");
  c->app = cmd;
  cmd->add_option("--vae-encoder", c->encoder_path, "TorchScript VAE encoder (docs/LATENTS.md)")->required();
  cmd->add_option("--data", c->data_dir, "shard directory; its shards are rewritten with the latents")->required();
  cmd->add_option("--dtype", c->dtype, "float16 (default) or bfloat16")->check(CLI::IsMember({"float16", "bfloat16"}));
  cmd->add_option("--latent-scale", c->latent_scale,
                  "z = (latents - shift) * scale for the model; default: the encoder's latent_scale attribute");
  cmd->add_option("--latent-shift", c->latent_shift, "default: the encoder's latent_shift attribute, else 0")
      ->each([c = c.get()](const std::string&) { c->latent_shift_given = true; });
  cmd->add_option("--batch-size", c->batch_size, "images per forward pass (64)");
  cmd->add_option("--threads", c->threads, "torch threads per rank (1)");
  cmd->add_flag("--overwrite", c->overwrite, "replace latents made by another encoder, dtype, scale or shift");
  cmd->add_option("--timeout", c->timeout_seconds, "seconds a rank may wait for the others (86400)");
  return c;
}

int run_encode_images_command(int argc, char** argv, const EncodeImagesCommand& command) {
  MpiSession session(&argc, &argv);
  const int rank = session.rank(), world = session.world_size();
  set_error_rank(rank, world);
  try {
    check_pass_options(command.batch_size, command.threads, command.timeout_seconds);
    if (command.latent_scale < 0 || !std::isfinite(command.latent_scale))
      throw std::invalid_argument("--latent-scale: expected a finite number > 0");
    if (!std::isfinite(command.latent_shift)) throw std::invalid_argument("--latent-shift: expected a finite number");
    torch::set_num_threads(command.threads);
    auto comm = make_communicator(session, torch::kCPU, {command.timeout_seconds});
    const data::ImageGeometry geometry = data::shard_directory_geometry(command.data_dir);
    const std::vector<data::ShardInfo> shards = data::open_shard_directory(command.data_dir, geometry);
    const model::FrozenVae encoder(command.encoder_path, "VAE encoder",
                                   {geometry.channels, geometry.height, geometry.width});
    const data::LatentInfo target = target_latents(encoder, command);
    ShardPass pass;
    pass.command = "encode-images";
    pass.unit = "images";
    pass.needs_work = [&](const data::ShardInfo& shard) { return needs_encoding(shard, target, command.overwrite); };
    pass.header = [&](int64_t kept) {
      char numbers[96];
      std::snprintf(numbers, sizeof numbers, ", scale %.9g, shift %.9g", target.scale, target.shift);
      return std::to_string(shards.size()) + " shard(s) of " + data::to_string(geometry) + " images in " +
             command.data_dir + ", " + std::to_string(kept) + " already encoded; encoder " + encoder.identity() +
             " -> latents " + data::to_string(target.shape) + numbers;
    };
    pass.run = [&](const data::ShardInfo& shard, const std::function<void(int64_t)>& done) {
      data::write_latents(shard.path, encode_shard(shard, encoder, target, command.batch_size, done));
    };
    run_shard_pass(*comm, shards, pass);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

}  // namespace difftrain::cli
