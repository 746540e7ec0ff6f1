#include "distributed/mpi_communicator.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace difftrain {

torch::Tensor pack_flat(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(t.reshape({-1}));
  return torch::cat(flat).contiguous();
}

void unpack_flat(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  int64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    t.copy_(flat.slice(0, offset, offset + n).view_as(t));
    offset += n;
  }
}

void Communicator::allreduce_mean(const std::vector<torch::Tensor>& tensors, const std::string& what) {
  if (tensors.empty() || world_size() == 1) return;
  torch::NoGradGuard no_grad;
  auto flat = pack_flat(tensors);
  allreduce_mean_async(flat, what)->wait();
  unpack_flat(flat, tensors);
}

namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat32) return MPI_FLOAT;
  if (t.scalar_type() == torch::kFloat64) return MPI_DOUBLE;
  if (t.scalar_type() == torch::kInt64) return MPI_INT64_T;
  throw std::invalid_argument(std::string("MPI communicator: unsupported dtype ") +
                              std::string(c10::toString(t.scalar_type())));
}

int mpi_count(const torch::Tensor& t, const std::string& what) {
  if (t.numel() > std::numeric_limits<int>::max())
    throw std::invalid_argument(what + ": " + std::to_string(t.numel()) +
                                " elements exceed one MPI call; use smaller buckets (distributed.bucket_mb)");
  return static_cast<int>(t.numel());
}

void check_cpu_buffer(const torch::Tensor& t, const std::string& what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "MPI communicator (", what,
              "): expects a contiguous CPU tensor, got ", t.device().str());
}

// Sum in place on the worker; the mean's division runs on the caller's thread in wait(),
// so all torch arithmetic stays on the threads that own the tensors.
class MpiPendingMean final : public PendingCollective {
 public:
  MpiPendingMean(std::shared_ptr<CollectiveTicket> ticket, torch::Tensor buffer, int world)
      : ticket_(std::move(ticket)), buffer_(std::move(buffer)), world_(world) {}
  void wait() override {
    if (!ticket_) return;
    ticket_->wait();
    torch::NoGradGuard no_grad;
    buffer_.div_(world_);
    seconds_ = ticket_->seconds();
    ticket_.reset();
  }
  double seconds() const override { return seconds_; }

 private:
  std::shared_ptr<CollectiveTicket> ticket_;
  torch::Tensor buffer_;
  int world_;
  double seconds_ = 0;
};

class Completed final : public PendingCollective {
 public:
  void wait() override {}
};

}  // namespace

MpiCommunicator::MpiCommunicator(int rank, int world_size, const CommunicatorOptions& options)
    : Communicator(rank, world_size), worker_(std::make_unique<MpiWorker>(options.timeout_seconds)) {}

std::unique_ptr<PendingCollective> MpiCommunicator::allreduce_mean_async(torch::Tensor buffer, std::string what) {
  if (world_size() == 1) return std::make_unique<Completed>();
  check_cpu_buffer(buffer, what);
  const int count = mpi_count(buffer, what);
  const MPI_Datatype type = mpi_type(buffer);
  void* data = buffer.data_ptr();
  auto ticket = worker_->submit(std::move(what), [=](MPI_Comm comm, MPI_Request* request) {
    return MPI_Iallreduce(MPI_IN_PLACE, data, count, type, MPI_SUM, comm, request);
  });
  return std::make_unique<MpiPendingMean>(std::move(ticket), std::move(buffer), world_size());
}

void MpiCommunicator::broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what) {
  if (tensors.empty() || world_size() == 1) return;
  torch::NoGradGuard no_grad;
  auto flat = pack_flat(tensors);
  check_cpu_buffer(flat, what);
  const int count = mpi_count(flat, what);
  const MPI_Datatype type = mpi_type(flat);
  void* data = flat.data_ptr();
  worker_->submit(what, [=](MPI_Comm comm, MPI_Request* request) {
    return MPI_Ibcast(data, count, type, root, comm, request);
  })->wait();
  unpack_flat(flat, tensors);
}

std::vector<double> MpiCommunicator::allreduce_sum(const std::vector<double>& values, const std::string& what) {
  auto out = std::make_shared<std::vector<double>>(values);
  if (world_size() == 1 || out->empty()) return *out;
  worker_->submit(what, [out](MPI_Comm comm, MPI_Request* request) {
    return MPI_Iallreduce(MPI_IN_PLACE, out->data(), static_cast<int>(out->size()), MPI_DOUBLE, MPI_SUM, comm,
                          request);
  })->wait();
  return *out;
}

void MpiCommunicator::broadcast_bytes(std::string& bytes, int root, const std::string& what) {
  if (world_size() == 1) return;
  auto size = std::make_shared<int64_t>(static_cast<int64_t>(bytes.size()));
  worker_->submit(what + " (size)", [size, root](MPI_Comm comm, MPI_Request* request) {
    return MPI_Ibcast(size.get(), 1, MPI_INT64_T, root, comm, request);
  })->wait();
  bytes.resize(static_cast<size_t>(*size));
  // MPI counts are int: larger payloads travel in chunks of 1 GiB.
  constexpr int64_t kChunk = int64_t{1} << 30;
  for (int64_t offset = 0; offset < *size; offset += kChunk) {
    const int count = static_cast<int>(std::min(kChunk, *size - offset));
    char* data = bytes.data() + offset;
    worker_->submit(what, [data, count, root](MPI_Comm comm, MPI_Request* request) {
      return MPI_Ibcast(data, count, MPI_BYTE, root, comm, request);
    })->wait();
  }
}

void MpiCommunicator::barrier(const std::string& what) {
  if (world_size() == 1) return;
  worker_->submit(what, [](MPI_Comm comm, MPI_Request* request) { return MPI_Ibarrier(comm, request); })->wait();
}

#ifdef DIFFTRAIN_WITH_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(const MpiSession& session, const torch::Device& device,
                                                     const CommunicatorOptions& options);
#endif

std::unique_ptr<Communicator> make_communicator(const MpiSession& session, const torch::Device& device,
                                                const CommunicatorOptions& options) {
  if (device.is_cuda()) {
#ifdef DIFFTRAIN_WITH_NCCL
    return make_nccl_communicator(session, device, options);
#else
    throw std::runtime_error(
        "train.device=cuda needs the NCCL backend, which this build does not have "
        "(build against a CUDA LibTorch with NCCL; see docs/ARCHITECTURE.md)");
#endif
  }
  return std::make_unique<MpiCommunicator>(session.rank(), session.world_size(), options);
}

}  // namespace difftrain
