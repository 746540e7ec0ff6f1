// NCCL backend for CUDA tensors (compiled only when CMake finds a CUDA LibTorch
// and NCCL: DIFFTRAIN_WITH_NCCL). Bootstrap as in llm.c: rank 0 creates the
// unique id, MPI broadcasts it, every rank joins with ncclCommInitRank.
// Collectives run on a dedicated stream; the compute stream records an event
// the NCCL stream waits on, and vice versa, so the host never blocks.
#ifdef DIFFTRAIN_WITH_NCCL

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <mpi.h>
#include <nccl.h>
#include <torch/torch.h>

#include <stdexcept>

#include "trainer/communicator.h"

namespace difftrain {
namespace {

void check_nccl(ncclResult_t result, const char* operation) {
  if (result != ncclSuccess)
    throw std::runtime_error(std::string(operation) + " failed: " + ncclGetErrorString(result));
}

ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kFloat16: return ncclFloat16;
    default: throw std::invalid_argument("NCCL communicator: unsupported dtype");
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int world, const torch::Device& device)
      : Communicator(rank, world), device_(device), stream_(c10::cuda::getStreamFromPool(true, device.index())) {
    ncclUniqueId id;
    if (rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    c10::cuda::CUDAGuard guard(device_);
    check_nccl(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
  }
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }
  std::string backend() const override { return "nccl"; }

  void allreduce_mean(const std::vector<torch::Tensor>& tensors) override {
    if (tensors.empty() || world_size() == 1) return;
    torch::NoGradGuard no_grad;
    c10::cuda::CUDAGuard guard(device_);
    auto flat = pack_flat(tensors);
    run_on_nccl_stream(flat, [&] {
      check_nccl(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(), nccl_type(flat), ncclAvg, comm_,
                               stream_.stream()),
                 "ncclAllReduce(gradients)");
    });
    unpack_flat(flat, tensors);
  }

  void broadcast(const std::vector<torch::Tensor>& tensors, int root) override {
    if (tensors.empty() || world_size() == 1) return;
    torch::NoGradGuard no_grad;
    c10::cuda::CUDAGuard guard(device_);
    auto flat = pack_flat(tensors);
    run_on_nccl_stream(flat, [&] {
      check_nccl(ncclBroadcast(flat.data_ptr(), flat.data_ptr(), flat.numel(), nccl_type(flat), root, comm_,
                               stream_.stream()),
                 "ncclBroadcast(parameters)");
    });
    unpack_flat(flat, tensors);
  }

  std::vector<double> allreduce_sum(const std::vector<double>& values) override {
    std::vector<double> out(values);
    MPI_Allreduce(MPI_IN_PLACE, out.data(), static_cast<int>(out.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return out;
  }

  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }

 private:
  template <class F>
  void run_on_nccl_stream(const torch::Tensor& buffer, F&& launch) {
    auto compute = c10::cuda::getCurrentCUDAStream(device_.index());
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(stream_);  // NCCL waits for the gradients to be written
    launch();
    // The caching allocator must not reuse the buffer before NCCL is done with it.
    c10::cuda::CUDACachingAllocator::recordStream(buffer.storage().data_ptr(), stream_);
    at::cuda::CUDAEvent done;
    done.record(stream_);
    done.block(compute);  // later compute kernels see the reduced values
  }

  torch::Device device_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const MpiSession& session, const torch::Device& device) {
  return std::make_unique<NcclCommunicator>(session.rank(), session.world_size(), device);
}

}  // namespace difftrain

#endif  // DIFFTRAIN_WITH_NCCL
