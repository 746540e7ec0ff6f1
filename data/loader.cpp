#include "data/loader.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace difftrain::data {
namespace {

LoaderOptions checked(LoaderOptions options) {
  if (options.batch_size < 1 || options.world_size < 1 || options.rank < 0 ||
      options.rank >= options.world_size || options.prefetch_batches < 1) {
    throw std::invalid_argument(
        "Loader: need batch_size >= 1, 0 <= rank < world_size and prefetch_batches >= 1, got "
        "batch_size " +
        std::to_string(options.batch_size) + ", rank " + std::to_string(options.rank) +
        ", world_size " + std::to_string(options.world_size) + ", prefetch_batches " +
        std::to_string(options.prefetch_batches));
  }
  return options;
}

// The text-embedding shape the loader will read, when asked to; all 0 otherwise.
TextEmbeddingShape text_shape_of(const LoaderOptions& options, const std::vector<ShardInfo>& shards) {
  if (!options.load_text_embeddings) return {};
  const std::optional<TextEmbeddingShape> shape = text_embedding_shape(shards);
  if (!shape) {
    throw ShardError("loader: the shards under " + options.shard_dir + " carry no text embeddings (datasets '" +
                     kTextStatesDataset + "', '" + kTextMaskDataset + "'); add them with `difftrain encode-text --data " +
                     options.shard_dir + " --encoder ...`");
  }
  return *shape;
}

// The latents the loader will read, when asked to; nullopt otherwise.
std::optional<LatentInfo> latents_of(const LoaderOptions& options, const std::vector<ShardInfo>& shards) {
  if (!options.load_latents) return std::nullopt;
  std::optional<LatentInfo> info = latent_info(shards);
  if (!info) {
    throw ShardError("loader: the shards under " + options.shard_dir + " carry no latents (dataset '" +
                     kLatentsDataset + "'); add them with `difftrain encode-images --data " + options.shard_dir +
                     " --vae-encoder ...`");
  }
  return info;
}

std::vector<int64_t> offsets_of(const std::vector<ShardInfo>& shards) {
  std::vector<int64_t> offsets = {0};
  for (const ShardInfo& shard : shards) offsets.push_back(offsets.back() + shard.count);
  return offsets;
}

}  // namespace

Loader::Loader(LoaderOptions options, LoaderPosition start)
    : options_(checked(std::move(options))),
      shards_(open_shard_directory(options_.shard_dir, options_.geometry)),
      shard_offsets_(offsets_of(shards_)),
      dataset_size_(shard_offsets_.back()),
      text_shape_(text_shape_of(options_, shards_)),
      latents_(latents_of(options_, shards_)),
      order_(dataset_size_, options_.batch_size, options_.rank, options_.world_size, options_.seed),
      readers_(shards_.size()) {
  if (order_.batches_per_epoch() == 0) {
    throw ShardError("loader: " + std::to_string(dataset_size_) + " samples in " +
                     std::to_string(shards_.size()) + " shard(s) under " + options_.shard_dir +
                     " give floor(" + std::to_string(dataset_size_) + " / world_size " +
                     std::to_string(options_.world_size) +
                     ") = " + std::to_string(order_.samples_per_rank()) +
                     " samples per rank, fewer than batch_size " +
                     std::to_string(options_.batch_size) + ": an epoch would hold no batch");
  }
  if (start.epoch < 0 || start.batch < 0) {
    throw std::invalid_argument("Loader: start position must not be negative, got epoch " +
                                std::to_string(start.epoch) + ", batch " +
                                std::to_string(start.batch));
  }
  thread_ = std::thread(&Loader::read_ahead, this, order_.normalize(start));
}

Loader::~Loader() {
  stop_ = true;
  {
    // Taking the mutex orders the store before the reader's predicate check,
    // so the notification cannot fall between its check and its wait.
    std::lock_guard<std::mutex> lock(mutex_);
  }
  space_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Batch Loader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Batch batch = std::move(queue_.front());
  queue_.pop_front();
  lock.unlock();
  space_.notify_one();
  return batch;
}

void Loader::read_ahead(LoaderPosition position) {
  try {
    const auto capacity = static_cast<size_t>(options_.prefetch_batches);
    while (!stop_) {
      Batch batch;
      if (!read_batch(position, &batch)) return;
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [&] { return stop_ || queue_.size() < capacity; });
      if (stop_) return;
      queue_.push_back(std::move(batch));
      lock.unlock();
      ready_.notify_one();
      position = order_.next(position);
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
    ready_.notify_all();
  }
}

bool Loader::read_batch(const LoaderPosition& position, Batch* batch) {
  const std::vector<int64_t> indices = order_.batch(position);  // (B)
  const bool latents = latents_.has_value();
  const int64_t image_bytes = latents ? 0 : options_.geometry.bytes();
  const int64_t latent_values = latents ? latents_->shape.values() : 0;
  batch->size = static_cast<int64_t>(indices.size());
  batch->position = position;
  batch->images.resize(static_cast<size_t>(batch->size * image_bytes));  // (B, H, W, C) or empty
  if (latents) {
    batch->latent_shape = latents_->shape;
    batch->latents.resize(static_cast<size_t>(batch->size * latent_values));  // (B, c, h, w)
  }
  batch->captions.resize(indices.size());                                // (B)
  const bool text = options_.load_text_embeddings;
  const TextEmbeddingShape& ts = text_shape_;
  if (text) {
    batch->text_shape = ts;
    batch->text_states.resize(static_cast<size_t>(batch->size * ts.state_values()));  // (B, L, D)
    batch->text_mask.resize(static_cast<size_t>(batch->size * ts.tokens));           // (B, L)
    batch->text_pooled.resize(static_cast<size_t>(batch->size * ts.pooled_width));   // (B, D')
  }
  for (size_t k = 0; k < indices.size(); ++k) {
    if (stop_) return false;
    const auto shard = static_cast<size_t>(
        std::upper_bound(shard_offsets_.begin(), shard_offsets_.end(), indices[k]) -
        shard_offsets_.begin() - 1);
    if (!readers_[shard]) readers_[shard] = std::make_unique<ShardReader>(shards_[shard]);
    const int64_t index = indices[k] - shard_offsets_[shard];
    readers_[shard]->read(index, latents ? nullptr : batch->images.data() + static_cast<int64_t>(k) * image_bytes,
                          &batch->captions[k]);
    if (latents) readers_[shard]->read_latent(index, batch->latents.data() + static_cast<int64_t>(k) * latent_values);
    if (text) {
      const auto row = static_cast<int64_t>(k);
      readers_[shard]->read_text(index,
                                 batch->text_states.data() + row * ts.state_values(),
                                 batch->text_mask.data() + row * ts.tokens,
                                 ts.pooled_width > 0 ? batch->text_pooled.data() + row * ts.pooled_width : nullptr);
    }
  }
  return true;
}

}  // namespace difftrain::data
