// Who did not join a collective: the stall inspector's bookkeeping (as in
// Horovod's stall inspector). Every rank tells rank 0 the sequence number of
// each collective it enters; when one does not complete within the timeout,
// rank 0 names the ranks whose latest arrival is older than it, and pings every
// rank to name those that do not answer at all.
// Pure bookkeeping, no MPI: distributed/mpi_worker.cpp feeds it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace difftrain {

class ArrivalBoard {
 public:
  explicit ArrivalBoard(int world_size);

  // Collective `seq` (0, 1, 2, ... in program order, the same on every rank) is named `what`.
  void name(int64_t seq, const std::string& what);
  // Rank `rank` entered collective `seq`.
  void arrive(int rank, int64_t seq);

  // The ranks that have not entered collective `seq`, in increasing order.
  std::vector<int> missing(int64_t seq) const;
  int64_t latest(int rank) const { return latest_[rank]; }  // -1: none yet

  // One sentence: which ranks did not join `seq` and the last collective each did join, and
  // which ranks did not answer a ping at all (`silent`: stopped, crashed or unreachable).
  std::string describe_stall(int64_t seq, const std::vector<int>& silent = {}) const;

 private:
  std::string label(int64_t seq) const;  // "#12 'gradients: bucket 2 of 5'" or "#12"

  std::vector<int64_t> latest_;          // (world): highest seq each rank entered
  std::map<int64_t, std::string> names_; // recent collectives' names, pruned to the last kNamesKept
  static constexpr size_t kNamesKept = 256;
};

// "1, 3 and 4"
std::string list_ranks(const std::vector<int>& ranks);

}  // namespace difftrain
