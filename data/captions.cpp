#include "data/captions.h"

#include <algorithm>
#include <random>

#include "data/shard_reader.h"

namespace difftrain::data {

std::vector<std::string> read_shard_captions(const std::string& dir) {
  std::vector<std::string> captions;
  for (const ShardInfo& info : open_shard_directory(dir, shard_directory_geometry(dir))) {
    ShardReader reader(info);
    std::string caption;
    for (int64_t i = 0; i < reader.size(); ++i) {
      reader.read(i, nullptr, &caption);
      captions.push_back(caption);
    }
  }
  return captions;
}

std::vector<std::string> seeded_order(std::vector<std::string> items, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // std::shuffle's algorithm is unspecified; this one is not.
  for (size_t i = items.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(items[i - 1], items[j]);
  }
  return items;
}

CaptionLengths caption_lengths(const std::vector<std::string>& captions, int64_t max_bytes) {
  CaptionLengths r;
  r.count = static_cast<int64_t>(captions.size());
  if (captions.empty()) return r;
  std::vector<int64_t> lengths;
  lengths.reserve(captions.size());
  for (const auto& c : captions) {
    lengths.push_back(static_cast<int64_t>(c.size()));
    if (lengths.back() > max_bytes && r.longer++ == 0) r.example_longer = c;
  }
  std::sort(lengths.begin(), lengths.end());
  const auto at = [&](double q) { return lengths[static_cast<size_t>(q * static_cast<double>(lengths.size() - 1))]; };
  r.p50 = at(0.5), r.p90 = at(0.9), r.p99 = at(0.99), r.max = lengths.back();
  return r;
}

}  // namespace difftrain::data
