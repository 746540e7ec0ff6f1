// MpiWorker: the one thread that makes a communicator's MPI calls.
//
// Threading model. Any thread may submit() a collective or note_external() one
// run elsewhere (NCCL); the worker thread starts them one at a time, in
// submission order (the program order, which is the same on every rank, so
// the ranks' collectives match), each as a nonblocking MPI call that it polls
// until it completes or its deadline passes. Because only this thread polls,
// a collective makes progress while the submitting thread computes: the
// gradient buckets of distributed/gradient_reducer overlap with backward this way
// (Open MPI has no asynchronous progress thread of its own). MPI is initialised
// with MPI_THREAD_MULTIPLE (distributed/mpi_session) since the main thread still
// makes MPI calls outside this worker (start-up, MPI_Abort).
//
// Failure never hangs. Every collective has a number (0, 1, 2, ... in program
// order). On entering one, each rank tells rank 0 its number; rank 0's worker
// keeps an ArrivalBoard (distributed/stall_report.h) and answers questions about
// it, even while its own main thread is busy or stuck. Before it describes a
// stall, rank 0 pings every rank's worker: one that does not answer within
// 2 s is named as stopped, crashed or unreachable. A collective that has
// not completed `timeout_seconds` after this rank entered it fails: the
// ticket's wait() throws CollectiveError naming the operation, and, from rank
// 0's board, the ranks that did not join. The caller then ends the job
// (cli: MPI_Abort), so no rank waits forever. Every later collective of this
// worker fails at once.
#pragma once

#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "distributed/stall_report.h"

namespace difftrain {

struct CollectiveError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Completion of one submitted collective.
class CollectiveTicket {
 public:
  // Blocks until the collective completed; throws CollectiveError if it failed or timed out.
  void wait();
  bool done() const;
  double seconds() const;  // this rank's time inside the collective (entry to completion)
  const std::string& what() const { return what_; }
  int64_t sequence() const { return seq_; }

 private:
  friend class MpiWorker;
  CollectiveTicket(std::string what, int64_t seq, double patience_seconds)
      : what_(std::move(what)), seq_(seq), patience_seconds_(patience_seconds) {}
  void finish(double seconds, std::string error);

  const std::string what_;
  const int64_t seq_;
  const double patience_seconds_;  // wait() gives up after this even if the worker never answers
  mutable std::mutex mutex_;
  std::condition_variable finished_;
  bool done_ = false;
  double seconds_ = 0;
  std::string error_;
};

class MpiWorker {
 public:
  // Issues one nonblocking collective on `comm`; returns an MPI error code.
  using Start = std::function<int(MPI_Comm comm, MPI_Request* request)>;

  // Collective over MPI_COMM_WORLD (duplicates it twice: collectives, stall messages).
  explicit MpiWorker(double timeout_seconds);
  ~MpiWorker();
  MpiWorker(const MpiWorker&) = delete;
  MpiWorker& operator=(const MpiWorker&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  double timeout_seconds() const { return timeout_seconds_; }

  // Queues a collective and returns at once. `start`'s buffers must stay valid and
  // untouched until the ticket is done.
  std::shared_ptr<CollectiveTicket> submit(std::string what, Start start);
  // A collective run outside MPI (NCCL): numbered and announced to rank 0 like the
  // others. Returns its number.
  int64_t note_external(std::string what);
  // Rank 0's account of who did not join collective `seq` (blocks up to a few seconds).
  std::string stall_report(int64_t seq);

 private:
  struct Item;
  void run();
  void run_collective(Item& item);
  void announce(int64_t seq, const std::string& what);
  void service_watch();   // completes our sends; receives arrivals, pings, pongs, queries
  void answer_queries();  // rank 0: replies to the queries service_watch collected
  std::vector<int> silent_ranks();  // rank 0: ranks whose worker does not answer a ping
  std::string ask_rank0(int64_t seq);
  void send_watch(int destination, int tag, std::vector<char> payload);
  void fail_broken(Item& item);

  const double timeout_seconds_;
  int rank_ = 0, world_size_ = 1;
  MPI_Comm collectives_ = MPI_COMM_NULL;  // the collectives themselves
  MPI_Comm watch_ = MPI_COMM_NULL;        // arrival notes and stall questions, point to point

  std::mutex mutex_;  // guards queue_, next_seq_, stop_
  std::condition_variable work_;
  std::deque<std::shared_ptr<Item>> queue_;
  int64_t next_seq_ = 0;
  bool stop_ = false;

  // Worker thread only:
  ArrivalBoard board_;  // meaningful on rank 0
  struct PendingSend {
    std::unique_ptr<std::vector<char>> payload;
    MPI_Request request;
  };
  std::deque<PendingSend> sends_;
  std::vector<std::pair<int, int64_t>> queries_;  // rank 0: (asking rank, seq) not yet answered
  std::vector<int64_t> pongs_;                    // rank 0: (world) latest ping token each rank answered
  int64_t ping_token_ = 0;
  std::string broken_;  // the first failure; non-empty = every later collective fails

  std::thread thread_;  // last: starts after every field above is ready
};

}  // namespace difftrain
