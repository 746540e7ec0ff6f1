// `difftrain model-info`: builds the UNet a configuration describes and prints its
// parameter count, in total and per part; optionally runs one forward and backward
// pass on one input (time, peak RSS) and writes the untrained model as a
// TorchScript denoiser. For checking a configuration's size before training it,
// e.g. that configs/sd15.yaml has Stable Diffusion 1.5's 859,520,964 parameters
// (docs/CONFIG.md, "Published UNet shapes").
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

namespace difftrain::cli {

struct ModelInfoCommand {
  CLI::App* app = nullptr;  // the subcommand; true once parsed
  std::string config_path;  // empty: the built-in defaults
  std::vector<std::string> overrides;  // key.path=value from --set: the overrides `train` takes as words
  bool forward_backward = false;
  std::string export_path;  // empty: no export
};

// Registers the subcommand and its options on `app`.
std::unique_ptr<ModelInfoCommand> add_model_info_command(CLI::App& app);

// Runs it in this process (no MPI); errors throw (main reports them as one
// "difftrain: error: ..." line). Returns the exit code.
int run_model_info_command(const ModelInfoCommand& command);

}  // namespace difftrain::cli
