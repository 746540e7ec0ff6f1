#include "distributed/weights_agreement.h"

#include <stdexcept>
#include <vector>

#include "distributed/communicator.h"

namespace difftrain {

uint64_t weights_fingerprint(torch::nn::Module& module) {
  uint64_t hash = 1469598103934665603ULL;
  for (const auto& p : module.parameters()) {
    auto cpu = p.detach().to(torch::kCPU).contiguous();
    const auto* bytes = static_cast<const uint8_t*>(cpu.data_ptr());
    const size_t n = cpu.numel() * cpu.element_size();
    for (size_t i = 0; i < n; ++i) hash = (hash ^ bytes[i]) * 1099511628211ULL;
  }
  return hash;
}


void require_identical_weights(Communicator& comm, torch::nn::Module& module, const std::string& what) {
  if (comm.world_size() == 1) return;
  // The 64-bit hash in 16-bit pieces: sums of the pieces and of their squares are exact in
  // float64, and sum(x) = n a with sum(x^2) = n a^2 holds only if every rank has x = a.
  const uint64_t hash = weights_fingerprint(module);
  std::vector<double> local;
  for (int shift = 0; shift < 64; shift += 16) {
    const double piece = static_cast<double>((hash >> shift) & 0xffff);
    local.push_back(piece);
    local.push_back(piece * piece);
  }
  const auto sums = comm.allreduce_sum(local, "weights fingerprint: " + what);
  const double n = comm.world_size();
  for (size_t i = 0; i < local.size(); ++i)
    if (sums[i] != n * local[i])
      throw std::runtime_error(what + ": the ranks' weights differ (rank " + std::to_string(comm.rank()) +
                               " fingerprint " + std::to_string(hash) + "); refusing to write a checkpoint");
}

}  // namespace difftrain
