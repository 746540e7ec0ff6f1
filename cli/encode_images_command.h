// `difftrain encode-images`: adds VAE latents from a frozen TorchScript encoder
// (model/frozen_vae.h) to every shard of a directory (docs/LATENTS.md). Under
// mpirun, rank r encodes the shards k % world == r (k: position in file-name
// order); each shard is encoded in the same batches whatever the number of ranks,
// so the result does not depend on it. A shard is rewritten atomically once all
// its images are encoded: an interrupted run resumes with the shards not yet done.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace difftrain::cli {

struct EncodeImagesCommand {
  CLI::App* app = nullptr;  // the subcommand; true once parsed
  std::string encoder_path;
  std::string data_dir;
  std::string dtype = "float16";  // float16 | bfloat16
  double latent_scale = 0;        // 0: the encoder's latent_scale attribute
  double latent_shift = 0;
  bool latent_shift_given = false;
  int64_t batch_size = 64;
  int threads = 1;
  bool overwrite = false;
  double timeout_seconds = 86400;
};

// Registers the subcommand and its options on `app`.
std::unique_ptr<EncodeImagesCommand> add_encode_images_command(CLI::App& app);

// Runs it: one rank per process (MpiSession); errors end every rank with
// "difftrain: error: ..." and a non-zero exit. Returns the exit code.
int run_encode_images_command(int argc, char** argv, const EncodeImagesCommand& command);

}  // namespace difftrain::cli
