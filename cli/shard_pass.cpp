#include "cli/shard_pass.h"

#include <cstdio>
#include <memory>
#include <stdexcept>

#include "distributed/communicator.h"
#include "monitoring/progress.h"

namespace difftrain::cli {

void check_pass_options(int64_t batch_size, int threads, double timeout_seconds) {
  if (batch_size < 1) throw std::invalid_argument("--batch-size " + std::to_string(batch_size) + ": expected >= 1");
  if (threads < 1) throw std::invalid_argument("--threads " + std::to_string(threads) + ": expected >= 1");
  if (!(timeout_seconds > 0)) throw std::invalid_argument("--timeout: expected seconds > 0");
}

void run_shard_pass(Communicator& comm, const std::vector<data::ShardInfo>& shards, const ShardPass& pass) {
  const int rank = comm.rank(), world = comm.world_size();
  std::vector<size_t> mine;
  int64_t my_samples = 0, kept = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    if (!pass.needs_work(shards[k])) {
      ++kept;
    } else if (static_cast<int>(k % static_cast<size_t>(world)) == rank) {
      mine.push_back(k);
      my_samples += shards[k].count;
    }
  }
  if (rank == 0) {
    std::printf("%s: %s\n", pass.command.c_str(), pass.header(kept).c_str());
    std::fflush(stdout);
  }
  comm.barrier(pass.command + ": every rank checked the shards");

  // Rank 0 reports its own share; the ranks' shares are within one shard of each other.
  std::unique_ptr<monitoring::RateProgress> progress;
  if (rank == 0 && my_samples > 0)
    progress = std::make_unique<monitoring::RateProgress>(pass.command, my_samples, 5.0, pass.unit);
  int64_t done = 0;
  for (const size_t k : mine) {
    pass.run(shards[k], [&](int64_t n) {
      done += n;
      if (progress) progress->update(static_cast<double>(done));
    });
  }
  const auto totals = comm.allreduce_sum({double(mine.size()), double(done)}, pass.command + ": every rank's shards done");
  if (rank == 0) {
    std::printf("%s: %lld shard(s) encoded now (%lld %s), %lld kept from an earlier run (%d rank%s)\n",
                pass.command.c_str(), static_cast<long long>(totals[0]), static_cast<long long>(totals[1]),
                pass.unit.c_str(), static_cast<long long>(kept), world, world == 1 ? "" : "s");
    std::fflush(stdout);
  }
  comm.barrier(pass.command + ": summary written");
}

}  // namespace difftrain::cli
