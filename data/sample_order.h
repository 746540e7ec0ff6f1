// SampleOrder: which samples a rank sees in which batch. Pure arithmetic, no
// I/O, so that resuming and sharding across ranks can be reasoned about (and
// tested) apart from the reading thread in data/loader.
#pragma once

#include <cstdint>
#include <vector>

namespace difftrain::data {

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t batch = 0;  // within the epoch
};

inline bool operator==(const LoaderPosition& a, const LoaderPosition& b) {
  return a.epoch == b.epoch && a.batch == b.batch;
}

// A permutation of [0, n) from std::mt19937_64 seeded by std::seed_seq over
// (seed, epoch), shuffled by our own Fisher-Yates: std::shuffle and the std
// distributions are implementation-defined, and the order must not change
// with the standard library (resume on another machine, reproduce in Python).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

// Each epoch every rank computes the same permutation `perm`; rank r takes
// perm[r], perm[r + world], ... for the first floor(N / world) * world
// entries, so the ranks' shares are disjoint and equal; its share is cut into
// batches of batch_size and an incomplete last batch is dropped.
class SampleOrder {
 public:
  // Throws std::invalid_argument on nonsense (batch_size < 1, rank outside
  // [0, world_size)). batches_per_epoch() may be 0; the caller decides.
  SampleOrder(int64_t dataset_size, int64_t batch_size, int rank, int world_size, uint64_t seed);

  int64_t samples_per_rank() const { return dataset_size_ / world_size_; }
  int64_t batches_per_epoch() const { return samples_per_rank() / batch_size_; }

  // Global sample indices of one batch, in order: (batch_size). Keeps the
  // last epoch's permutation, so consecutive calls cost O(batch_size).
  std::vector<int64_t> batch(const LoaderPosition& position);

  // The position after `position`, rolling over into the next epoch.
  LoaderPosition next(const LoaderPosition& position) const;
  // Brings batch into [0, batches_per_epoch()) by carrying into epoch, so a
  // caller may store {epoch, batch + 1} after the last batch of an epoch.
  LoaderPosition normalize(const LoaderPosition& position) const;

 private:
  int64_t dataset_size_, batch_size_;
  int rank_, world_size_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> permutation_;  // (dataset_size) of cached_epoch_
};

}  // namespace difftrain::data
