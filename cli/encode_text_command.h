// `difftrain encode-text`: adds precomputed text embeddings from a frozen
// TorchScript text encoder (model/frozen_text_encoder.h) to every shard of a
// directory (docs/CONDITIONING.md). Under mpirun, rank r encodes the shards
// k % world == r (k: position in file-name order); the result does not depend
// on the number of ranks. With --prompt / --prompt-file and --out it writes a prompt-embeddings
// file instead (captions + text_* in the shard layout, no images) for `sample --prompt-embeddings`.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace difftrain::cli {

struct EncodeTextCommand {
  CLI::App* app = nullptr;  // the subcommand; true once parsed
  std::string encoder_path;
  std::string data_dir;
  std::vector<std::string> prompts;  // --prompt (repeatable) ...
  std::string prompt_file;           // ... and/or --prompt-file, with --out instead of --data
  std::string out;
  std::string null_kind = "empty";   // --null: the empty caption's embedding, or zeros
  std::string tokenizer = "bytes";  // "bytes" or a SentencePiece .model file
  int64_t batch_size = 64;
  int threads = 1;
  bool overwrite = false;
  double timeout_seconds = 86400;
};

// Registers the subcommand and its options on `app`.
std::unique_ptr<EncodeTextCommand> add_encode_text_command(CLI::App& app);

// Runs it: one rank per process (MpiSession); errors end every rank with
// "difftrain: error: ..." and a non-zero exit. Returns the exit code.
int run_encode_text_command(int argc, char** argv, const EncodeTextCommand& command);

}  // namespace difftrain::cli
