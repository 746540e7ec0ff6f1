// The MPI backend (CPU tensors). Every collective runs on the MpiWorker's
// thread (distributed/mpi_worker.h), so it progresses while the caller computes
// and fails with a named error after the timeout instead of hanging.
// The NCCL backend reuses it for host-side statistics, barriers and the
// stall inspector.
#pragma once

#include <memory>

#include "distributed/communicator.h"
#include "distributed/mpi_worker.h"

namespace difftrain {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int rank, int world_size, const CommunicatorOptions& options);
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<PendingCollective> allreduce_mean_async(torch::Tensor buffer, std::string what) override;
  void broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what) override;
  std::vector<double> allreduce_sum(const std::vector<double>& values, const std::string& what) override;
  void broadcast_bytes(std::string& bytes, int root, const std::string& what) override;
  void barrier(const std::string& what) override;

  MpiWorker& worker() { return *worker_; }

 private:
  std::unique_ptr<MpiWorker> worker_;
};

}  // namespace difftrain
