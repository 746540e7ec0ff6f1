// Collective communication behind one interface. Backends:
//   MPI  (mpi_communicator.cpp)  - CPU tensors
//   NCCL (nccl_communicator.cpp) - CUDA tensors; compiled only with a CUDA LibTorch and NCCL
// make_communicator() is the one place that chooses between them.
//
// Threading: every call is made from the training (main) thread.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "trainer/mpi_session.h"

namespace difftrain {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // In place: every tensor becomes the mean over ranks. All tensors share one
  // dtype (float32/float64) and device; they are packed into one flat buffer
  // so the job pays one collective, not one per parameter.
  virtual void allreduce_mean(const std::vector<torch::Tensor>& tensors) = 0;
  // In place: every rank receives root's values.
  virtual void broadcast(const std::vector<torch::Tensor>& tensors, int root) = 0;
  // Scalar statistics (loss, counts) in float64, summed over ranks; host side.
  virtual std::vector<double> allreduce_sum(const std::vector<double>& values) = 0;
  virtual void barrier() = 0;

 protected:
  Communicator(int rank, int world_size) : rank_(rank), world_size_(world_size) {}

 private:
  int rank_, world_size_;
};

std::unique_ptr<Communicator> make_communicator(const MpiSession& session, const torch::Device& device);

// Flat-buffer helpers shared by the backends.
torch::Tensor pack_flat(const std::vector<torch::Tensor>& tensors);                 // (sum numel)
void unpack_flat(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors);

}  // namespace difftrain
