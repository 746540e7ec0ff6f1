// Captions of a shard set as a whole: every caption in file order, a seeded
// order of them for evaluation prompts, and their length distribution against
// the tokenizer's limit (model/tokenizer.h keeps max_tokens UTF-8 bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

// Every caption of every shard in `dir` (shards by file name, samples in
// order). Validates the shards against their own geometry; throws ShardError.
std::vector<std::string> read_shard_captions(const std::string& dir);

// The items in the order of a Fisher-Yates shuffle driven by std::mt19937_64
// seeded with `seed` (both fully specified by the standard, so the order is
// the same on every platform): evaluation image i gets caption i of this order.
std::vector<std::string> seeded_order(std::vector<std::string> items, uint64_t seed);

struct CaptionLengths {
  int64_t count = 0;                 // captions seen
  int64_t p50 = 0, p90 = 0, p99 = 0, max = 0;  // lengths in UTF-8 bytes
  int64_t longer = 0;                // captions longer than the limit
  std::string example_longer;        // the first of them, if any
};
CaptionLengths caption_lengths(const std::vector<std::string>& captions, int64_t max_bytes);

}  // namespace difftrain::data
