#include <mpi.h>
#include <torch/torch.h>

#include <stdexcept>

#include "trainer/communicator.h"

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

namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat32) return MPI_FLOAT;
  if (t.scalar_type() == torch::kFloat64) return MPI_DOUBLE;
  if (t.scalar_type() == torch::kInt64) return MPI_INT64_T;
  throw std::invalid_argument(std::string("MPI communicator: unsupported dtype ") +
                              std::string(c10::toString(t.scalar_type())));
}

void check(int code, const char* operation) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(operation) + " failed: " + std::string(text, length));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int rank, int world) : Communicator(rank, world) {}
  std::string backend() const override { return "mpi"; }

  void allreduce_mean(const std::vector<torch::Tensor>& tensors) override {
    if (tensors.empty() || world_size() == 1) return;
    for (const auto& t : tensors)
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == tensors[0].scalar_type(),
                  "MPI all-reduce expects CPU tensors of one dtype");
    torch::NoGradGuard no_grad;
    auto flat = pack_flat(tensors);
    check(MPI_Allreduce(MPI_IN_PLACE, flat.data_ptr(), static_cast<int>(flat.numel()), mpi_type(flat), MPI_SUM,
                        MPI_COMM_WORLD),
          "MPI_Allreduce(gradients)");
    flat.div_(world_size());
    unpack_flat(flat, tensors);
  }

  void broadcast(const std::vector<torch::Tensor>& tensors, int root) override {
    if (tensors.empty() || world_size() == 1) return;
    torch::NoGradGuard no_grad;
    auto flat = pack_flat(tensors);
    check(MPI_Bcast(flat.data_ptr(), static_cast<int>(flat.numel()), mpi_type(flat), root, MPI_COMM_WORLD),
          "MPI_Bcast(parameters)");
    unpack_flat(flat, tensors);
  }

  std::vector<double> allreduce_sum(const std::vector<double>& values) override {
    std::vector<double> out(values);
    if (world_size() > 1)
      check(MPI_Allreduce(MPI_IN_PLACE, out.data(), static_cast<int>(out.size()), MPI_DOUBLE, MPI_SUM,
                          MPI_COMM_WORLD),
            "MPI_Allreduce(statistics)");
    return out;
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
};

}  // namespace

#ifdef DIFFTRAIN_WITH_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(const MpiSession& session, const torch::Device& device);
#endif

std::unique_ptr<Communicator> make_communicator(const MpiSession& session, const torch::Device& device) {
  if (device.is_cuda()) {
#ifdef DIFFTRAIN_WITH_NCCL
    return make_nccl_communicator(session, device);
#else
    throw std::runtime_error(
        "train.device=cuda needs the NCCL backend, which this build does not have "
        "(build against a CUDA LibTorch with NCCL; see docs/ARCHITECTURE.md)");
#endif
  }
  return std::make_unique<MpiCommunicator>(session.rank(), session.world_size());
}

}  // namespace difftrain
