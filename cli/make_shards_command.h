// `difftrain make-shards`: a folder of captioned images (metadata.jsonl) or a
// CSV/TSV list → shards (data/make_shards.h; docs/SHARD_FORMAT.md, "Making
// shards from your images"). Under mpirun, rank r converts chunks k % world == r.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "data/make_shards.h"

namespace difftrain::cli {

struct MakeShardsCommand {
  CLI::App* app = nullptr;  // the subcommand; true once parsed
  data::MakeShardsOptions options;
  std::string geometry = "crop";
  std::string background = "255,255,255";
  double timeout_seconds = 86400;
};

// Registers the subcommand and its options on `app`.
std::unique_ptr<MakeShardsCommand> add_make_shards_command(CLI::App& app);

// Runs it: one rank per process (MpiSession); errors end every rank with
// "difftrain: error: ..." and a non-zero exit. Returns the exit code.
int run_make_shards_command(int argc, char** argv, const MakeShardsCommand& command);

}  // namespace difftrain::cli
