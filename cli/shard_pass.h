// The pass `encode-text` and `encode-images` make over a shard directory: every rank
// checks every shard first (so a refusal changes no file), rank r then rewrites the
// shards k % world == r (k: position in file-name order) that need it, with rank 0
// reporting progress and the totals. A shard is rewritten atomically once it is
// done, so a stopped pass resumes with the shards not yet done.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/shard_reader.h"

namespace difftrain {
class Communicator;
}

namespace difftrain::cli {

// --batch-size >= 1, --threads >= 1, --timeout > 0, or std::invalid_argument naming the option.
void check_pass_options(int64_t batch_size, int threads, double timeout_seconds);

struct ShardPass {
  std::string command;  // "encode-text": prefixes every line and names the collectives
  std::string unit;     // what a shard's samples are counted as: "captions", "images"
  // True when the shard must be (re)written; throws to refuse the whole pass.
  std::function<bool(const data::ShardInfo&)> needs_work;
  // The line rank 0 prints once every shard is checked, given how many are kept.
  std::function<std::string(int64_t kept)> header;
  // Computes and writes one shard, calling done(n) after every n samples.
  std::function<void(const data::ShardInfo&, const std::function<void(int64_t)>& done)> run;
};

// Collective: every rank calls it with the same shards.
void run_shard_pass(Communicator& comm, const std::vector<data::ShardInfo>& shards, const ShardPass& pass);

}  // namespace difftrain::cli
