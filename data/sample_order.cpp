#include "data/sample_order.h"

#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>

namespace difftrain::data {

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  const auto e = static_cast<uint64_t>(epoch);
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32)};
  std::mt19937_64 rng(seq);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  // The modulo bias is below n / 2^64: irrelevant for any dataset that fits on disk.
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

SampleOrder::SampleOrder(int64_t dataset_size, int64_t batch_size, int rank, int world_size,
                         uint64_t seed)
    : dataset_size_(dataset_size),
      batch_size_(batch_size),
      rank_(rank),
      world_size_(world_size),
      seed_(seed) {
  if (dataset_size < 0 || batch_size < 1 || world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument(
        "SampleOrder: need dataset_size >= 0, batch_size >= 1 and 0 <= rank < world_size, got "
        "dataset_size " +
        std::to_string(dataset_size) + ", batch_size " + std::to_string(batch_size) + ", rank " +
        std::to_string(rank) + ", world_size " + std::to_string(world_size));
  }
}

std::vector<int64_t> SampleOrder::batch(const LoaderPosition& position) {
  if (position.epoch < 0 || position.batch < 0 || position.batch >= batches_per_epoch()) {
    throw std::out_of_range("SampleOrder: batch " + std::to_string(position.batch) + " of epoch " +
                            std::to_string(position.epoch) + " is outside [0, " +
                            std::to_string(batches_per_epoch()) + ")");
  }
  if (position.epoch != cached_epoch_) {
    permutation_ = epoch_permutation(dataset_size_, seed_, position.epoch);
    cached_epoch_ = position.epoch;
  }
  std::vector<int64_t> indices(static_cast<size_t>(batch_size_));  // (batch_size)
  for (int64_t k = 0; k < batch_size_; ++k) {
    const int64_t slot = position.batch * batch_size_ + k;  // within this rank's share
    indices[static_cast<size_t>(k)] = permutation_[static_cast<size_t>(rank_ + slot * world_size_)];
  }
  return indices;
}

LoaderPosition SampleOrder::next(const LoaderPosition& position) const {
  return normalize({position.epoch, position.batch + 1});
}

LoaderPosition SampleOrder::normalize(const LoaderPosition& position) const {
  const int64_t per_epoch = batches_per_epoch();
  if (position.epoch < 0 || position.batch < 0 || per_epoch == 0) {
    throw std::invalid_argument("SampleOrder: cannot place batch " +
                                std::to_string(position.batch) + " of epoch " +
                                std::to_string(position.epoch) + " with " +
                                std::to_string(per_epoch) + " batches per epoch");
  }
  return {position.epoch + position.batch / per_epoch, position.batch % per_epoch};
}

}  // namespace difftrain::data
