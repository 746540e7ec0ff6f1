// Collective communication behind one interface. Backends:
//   MPI  (mpi_communicator.cpp)  - CPU tensors
//   NCCL (nccl_communicator.cpp) - CUDA tensors; compiled only with a CUDA LibTorch and NCCL
// make_communicator() is the one place that chooses between them.
//
// Threading: collectives start in the order they are called, which must be the
// same on every rank. The gradient reducer calls allreduce_mean_async from
// autograd's backward (the main thread on CPU, autograd's device thread on
// CUDA) while the main thread is inside backward(); everything else is called
// from the main thread. A collective that does not complete within
// `timeout_seconds` throws CollectiveError (distributed/mpi_worker.h) naming the
// operation and the ranks that did not join; the caller ends the job.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "distributed/mpi_session.h"

namespace difftrain {

struct CommunicatorOptions {
  double timeout_seconds = 600;  // distributed.timeout_seconds
};

// An asynchronous collective in flight.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Afterwards the buffer holds the result for everything that runs after this call on
  // this thread: MPI blocks until done; NCCL orders the current CUDA stream after the
  // collective without blocking the host. Throws CollectiveError on failure or timeout.
  virtual void wait() = 0;
  // This rank's seconds inside the collective, known after wait() (MPI; 0 for NCCL).
  virtual double seconds() const { return 0; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // Starts averaging `buffer` (contiguous float32/float64 on this backend's device) over
  // ranks, in place. Neither read nor write the buffer before wait() returns.
  // `what` names it in errors ("gradients: bucket 2 of 5").
  virtual std::unique_ptr<PendingCollective> allreduce_mean_async(torch::Tensor buffer, std::string what) = 0;
  // In place, blocking: every tensor becomes its mean over ranks. The tensors (one dtype)
  // travel packed in one flat buffer: one collective, not one per tensor.
  void allreduce_mean(const std::vector<torch::Tensor>& tensors, const std::string& what);
  // In place: every rank receives root's values.
  virtual void broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what) = 0;
  // Scalar statistics (loss, counts, flags) in float64, summed over ranks; host side.
  virtual std::vector<double> allreduce_sum(const std::vector<double>& values, const std::string& what) = 0;
  // Host bytes (a checkpoint's files, a decision): every rank's `bytes` becomes root's,
  // whatever its length. Always over MPI, with the timeout and stall report of the MPI worker.
  virtual void broadcast_bytes(std::string& bytes, int root, const std::string& what) = 0;
  virtual void barrier(const std::string& what) = 0;

 protected:
  Communicator(int rank, int world_size) : rank_(rank), world_size_(world_size) {}

 private:
  int rank_, world_size_;
};

std::unique_ptr<Communicator> make_communicator(const MpiSession& session, const torch::Device& device,
                                                const CommunicatorOptions& options = {});

// Flat-buffer helpers shared by the backends.
torch::Tensor pack_flat(const std::vector<torch::Tensor>& tensors);                 // (sum numel)
void unpack_flat(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors);

}  // namespace difftrain
