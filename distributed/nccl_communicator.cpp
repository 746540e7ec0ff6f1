// NCCL backend for CUDA tensors (compiled only when CMake finds a CUDA LibTorch
// and NCCL: DIFFTRAIN_WITH_NCCL). Bootstrap as in llm.c: rank 0 creates the
// unique id, MPI broadcasts it, every rank joins with ncclCommInitRank.
//
// Streams, not host waits: a collective runs on this communicator's own
// stream; the caller's stream records an event that the NCCL stream waits on
// (the gradients are written), and wait() makes the caller's stream wait on
// the collective's completion event, so the host never blocks.
//
// Threading: allreduce_mean_async is called from autograd's device thread
// during backward and everything else from the training thread, never at the
// same time (the training thread is inside backward()); a mutex makes that a
// rule, not luck. A watchdog thread checks every collective's completion
// event: one still running `timeout_seconds` after it was enqueued, or an
// asynchronous NCCL error, makes the watchdog abort the NCCL communicator
// (which frees the kernels), print the operation and rank 0's account of who
// did not join (the MPI stall inspector, distributed/mpi_worker.h), and end the
// job with MPI_Abort, as PyTorch's NCCL watchdog does. Host-side statistics,
// byte broadcasts and barriers go through the MPI communicator, with its own timeout.
#ifdef DIFFTRAIN_WITH_NCCL

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <mpi.h>
#include <nccl.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <list>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "distributed/mpi_communicator.h"

namespace difftrain {
namespace {

using Clock = std::chrono::steady_clock;

void check_nccl(ncclResult_t result, const std::string& operation) {
  if (result != ncclSuccess)
    throw CollectiveError(operation + " failed: " + ncclGetErrorString(result));
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

struct Watched {
  std::shared_ptr<at::cuda::CUDAEvent> done;
  Clock::time_point deadline;
  std::string what;
  int64_t seq;
};

class NcclPending final : public PendingCollective {
 public:
  NcclPending(std::shared_ptr<at::cuda::CUDAEvent> done, const std::atomic<bool>* failed, std::string what)
      : done_(std::move(done)), failed_(failed), what_(std::move(what)) {}
  void wait() override {
    if (failed_->load()) throw CollectiveError("NCCL collective '" + what_ + "': the communicator was aborted");
    done_->block(c10::cuda::getCurrentCUDAStream(done_->device_index()));
  }

 private:
  std::shared_ptr<at::cuda::CUDAEvent> done_;
  const std::atomic<bool>* failed_;
  std::string what_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int world, const torch::Device& device, const CommunicatorOptions& options)
      : Communicator(rank, world),
        host_(rank, world, options),
        device_(device),
        timeout_(options.timeout_seconds),
        stream_(c10::cuda::getStreamFromPool(true, device.index())) {
    ncclUniqueId id;
    if (rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_.worker()
        .submit("NCCL unique id",
                [&id](MPI_Comm comm, MPI_Request* request) {
                  return MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, comm, request);
                })
        ->wait();
    c10::cuda::CUDAGuard guard(device_);
    check_nccl(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    stop_ = true;
    watchdog_.join();
    if (!failed_) ncclCommDestroy(comm_);
  }

  std::string backend() const override { return "nccl"; }

  std::unique_ptr<PendingCollective> allreduce_mean_async(torch::Tensor buffer, std::string what) override {
    TORCH_CHECK(buffer.is_cuda() && buffer.is_contiguous(), "NCCL communicator (", what,
                "): expects a contiguous CUDA tensor");
    return enqueue(buffer, std::move(what), [&](cudaStream_t stream) {
      return ncclAllReduce(buffer.data_ptr(), buffer.data_ptr(), buffer.numel(), nccl_type(buffer), ncclAvg, comm_,
                           stream);
    });
  }

  void broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what) override {
    if (tensors.empty() || world_size() == 1) return;
    torch::NoGradGuard no_grad;
    c10::cuda::CUDAGuard guard(device_);
    auto flat = pack_flat(tensors);
    enqueue(flat, what, [&](cudaStream_t stream) {
      return ncclBroadcast(flat.data_ptr(), flat.data_ptr(), flat.numel(), nccl_type(flat), root, comm_, stream);
    })->wait();
    unpack_flat(flat, tensors);
  }

  std::vector<double> allreduce_sum(const std::vector<double>& values, const std::string& what) override {
    return host_.allreduce_sum(values, what);
  }
  void broadcast_bytes(std::string& bytes, int root, const std::string& what) override {
    host_.broadcast_bytes(bytes, root, what);
  }
  void barrier(const std::string& what) override { host_.barrier(what); }

 private:
  template <class Launch>
  std::unique_ptr<PendingCollective> enqueue(const torch::Tensor& buffer, std::string what, Launch&& launch) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (failed_) throw CollectiveError("NCCL collective '" + what + "': the communicator was aborted");
    c10::cuda::CUDAGuard guard(device_);
    const int64_t seq = host_.worker().note_external(what);  // numbered and announced to rank 0 like MPI's
    auto compute = c10::cuda::getCurrentCUDAStream(device_.index());
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(stream_);  // NCCL waits until the buffer is written
    check_nccl(launch(stream_.stream()), "NCCL collective '" + what + "' (#" + std::to_string(seq) + ")");
    // The caching allocator must not reuse the buffer before NCCL is done with it.
    c10::cuda::CUDACachingAllocator::recordStream(buffer.storage().data_ptr(), stream_);
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record(stream_);
    {
      std::lock_guard<std::mutex> watch_lock(watch_mutex_);
      watched_.push_back({done, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(timeout_)),
                          what, seq});
    }
    return std::make_unique<NcclPending>(done, &failed_, std::move(what));
  }

  // The watchdog thread.
  void watch() {
    c10::cuda::CUDAGuard guard(device_);
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::string failure;
      int64_t seq = -1;
      {
        std::lock_guard<std::mutex> lock(watch_mutex_);
        for (auto it = watched_.begin(); it != watched_.end();) {
          if (it->done->query()) {
            it = watched_.erase(it);
          } else if (Clock::now() > it->deadline) {
            failure = "NCCL collective '" + it->what + "' (#" + std::to_string(it->seq) +
                      ") did not complete within " + std::to_string(timeout_) + " s on rank " +
                      std::to_string(rank()) + " (distributed.timeout_seconds)";
            seq = it->seq;
            break;
          } else {
            ++it;
          }
        }
      }
      ncclResult_t async = ncclSuccess;
      if (failure.empty() && ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess)
        failure = std::string("NCCL reported an asynchronous error on rank ") + std::to_string(rank()) + ": " +
                  ncclGetErrorString(async);
      if (failure.empty()) continue;
      failed_ = true;
      ncclCommAbort(comm_);  // frees kernels stuck waiting for peers
      if (seq >= 0) failure += ": " + host_.worker().stall_report(seq);
      std::fprintf(stderr, "difftrain: error [rank %d]: %s\n", rank(), failure.c_str());
      std::fflush(stderr);
      MpiSession::abort_job(1);
    }
  }

  MpiCommunicator host_;
  torch::Device device_;
  double timeout_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
  std::mutex mutex_;  // one collective enqueued at a time
  std::mutex watch_mutex_;
  std::list<Watched> watched_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const MpiSession& session, const torch::Device& device,
                                                     const CommunicatorOptions& options) {
  return std::make_unique<NcclCommunicator>(session.rank(), session.world_size(), device, options);
}

}  // namespace difftrain

#endif  // DIFFTRAIN_WITH_NCCL
