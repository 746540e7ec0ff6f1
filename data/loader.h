// Loader: one rank's batches of (image, caption) from a directory of shards,
// read ahead on a background thread.
//
// Threading model. The constructor runs on the caller's thread: it lists and
// validates every shard (HDF5 calls), then starts one reader thread. From then
// on the reader thread is the only thread that reads this loader's shards: it
// opens each on first use, fills a queue bounded to prefetch_batches batches
// and sleeps while the queue is full. next() runs on the caller's thread and
// only pops from the queue. HDF5 (as used here, through its C++ API) is not
// thread-safe; data/ serialises all its HDF5 calls behind one process-wide
// lock (data/hdf5_util.h), so other data/ calls (another Loader, a
// ShardWriter) may run meanwhile, but nothing outside data/ may call HDF5
// without that lock. An exception in the reader
// thread is handed to next(), which rethrows it once the batches produced
// before it are consumed: never a hang, never std::terminate. The destructor
// stops and joins the thread; it waits at most for one sample being read.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/sample_order.h"
#include "data/shard_format.h"
#include "data/shard_reader.h"

namespace difftrain::data {

struct LoaderOptions {
  std::string shard_dir;
  ImageGeometry geometry;
  int64_t batch_size = 0;  // per rank
  int rank = 0, world_size = 1;
  uint64_t seed = 0;
  int prefetch_batches = 4;
  // Also read each sample's precomputed text embeddings (docs/CONDITIONING.md) into
  // Batch::text_*; every shard must carry them, with the same shape and encoder.
  bool load_text_embeddings = false;
  // Read each sample's latent (docs/LATENTS.md) into Batch::latents instead of its image
  // (Batch::images stays empty); every shard must carry the same latents.
  bool load_latents = false;
};

struct Batch {
  std::vector<uint8_t> images;        // (B, H, W, C)
  std::vector<std::string> captions;  // (B)
  int64_t size = 0;                   // B
  LoaderPosition position;            // position of this batch
  // Filled only with LoaderOptions::load_text_embeddings; row k belongs to images[k].
  TextEmbeddingShape text_shape;      // L, D, D' (all 0 without embeddings)
  std::vector<uint16_t> text_states;  // (B, L, D) float16 bits
  std::vector<uint8_t> text_mask;     // (B, L) 1 = real token
  std::vector<uint16_t> text_pooled;  // (B, D') float16 bits; empty when the shards have no text_pooled
  // Filled only with LoaderOptions::load_latents.
  LatentShape latent_shape;           // c, h, w, dtype (all 0 without latents)
  std::vector<uint16_t> latents;      // (B, c, h, w) 16-bit float bits in latent_shape.dtype
};

// Each epoch: a permutation of all N samples (across all shards, in file-name
// order) from std::mt19937_64 seeded by (seed, epoch), the same on every rank;
// rank r takes perm[r], perm[r + world], ... for the first
// floor(N / world) * world entries, so shares are disjoint and equal; batches
// of batch_size, the last incomplete one dropped (see data/sample_order.h).
// Batches go on forever, epoch after epoch. Starting at a LoaderPosition
// resumes exactly: the batches produced equal those an uninterrupted loader
// produces from there. A position past the end of an epoch, like
// {epoch, batches_per_epoch()}, carries into the next epoch.
class Loader {
 public:
  // Throws ShardError for a bad shard directory, if an epoch would hold no
  // batch, or if text embeddings are asked for and a shard lacks them or disagrees, std::invalid_argument for nonsense options.
  Loader(LoaderOptions options, LoaderPosition start);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch next();  // blocks until the next batch is read; rethrows reader errors
  int64_t batches_per_epoch() const { return order_.batches_per_epoch(); }
  int64_t dataset_size() const { return dataset_size_; }  // N, all ranks together
  // The shards' text-embedding shape; set with load_text_embeddings, else all 0.
  const TextEmbeddingShape& text_shape() const { return text_shape_; }
  // The shards' latents; set with load_latents.
  const std::optional<LatentInfo>& latents() const { return latents_; }

 private:
  void read_ahead(LoaderPosition position);  // the reader thread
  // Returns false if stopped before the batch was complete.
  bool read_batch(const LoaderPosition& position, Batch* batch);

  const LoaderOptions options_;
  const std::vector<ShardInfo> shards_;
  std::vector<int64_t> shard_offsets_;  // (shards + 1): global index of each shard's first sample
  int64_t dataset_size_ = 0;
  TextEmbeddingShape text_shape_;
  std::optional<LatentInfo> latents_;

  // Its permutation cache belongs to the reader thread; batches_per_epoch() only
  // reads fields fixed at construction.
  SampleOrder order_;
  std::vector<std::unique_ptr<ShardReader>> readers_;  // (shards), opened on first use

  std::mutex mutex_;               // guards queue_ and error_
  std::condition_variable ready_;  // a batch or an error arrived
  std::condition_variable space_;  // the queue has room, or stop_
  std::deque<Batch> queue_;        // at most prefetch_batches
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace difftrain::data
