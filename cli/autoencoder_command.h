// `difftrain autoencoder train | export | eval`: the KL autoencoder of latent
// diffusion (model/autoencoder.h, docs/LATENTS.md).
//   train   --config FILE [key=value ...]   (one rank per process under mpirun/srun)
//   export  --checkpoint DIR --encoder enc.pt --decoder dec.pt [--scale-samples N]
//   eval    --checkpoint DIR --data SHARDS [--limit N]: reconstruction PSNR and images/s
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace difftrain::cli {

struct AutoencoderCommand {
  CLI::App* app = nullptr;  // `autoencoder`; true once parsed
  CLI::App* train = nullptr;
  CLI::App* export_files = nullptr;
  CLI::App* eval = nullptr;
  std::string config_path;
  std::vector<std::string> overrides, set_overrides;  // positional key=value and --set key=value
  std::string checkpoint, encoder_path, decoder_path, data_dir;
  int64_t scale_samples = 1000;
  int64_t limit = 0;
  int64_t batch_size = 64;
  int threads = 1;
};

// Registers the subcommand, its three subcommands and their options on `app`.
std::unique_ptr<AutoencoderCommand> add_autoencoder_command(CLI::App& app);

// Runs it; errors end every rank with "difftrain: error: ..." and a non-zero exit. Returns the exit code.
int run_autoencoder_command(int argc, char** argv, const AutoencoderCommand& command);

}  // namespace difftrain::cli
