// Captions of a shard set: reading them in order, the seeded evaluation order,
// and the length distribution behind the caption-cut warning.
#include <algorithm>
#include <random>

#include "data/captions.h"
#include "data/shard_writer.h"
#include "tests/data_test_util.h"

namespace difftrain::data {
namespace {

TEST(Captions, ReadInShardOrderAndSeededOrderIsAFixedPermutation) {
  testing::TempDir dir;
  const ImageGeometry grey{4, 4, 1};
  for (int shard = 0; shard < 2; ++shard) {
    ShardWriter writer(dir.file("shard-0000" + std::to_string(shard) + ".h5"), grey);
    for (int i = 0; i < 3; ++i) writer.add(testing::image_of(i, grey).data(), "c" + std::to_string(shard * 3 + i));
    writer.close();
  }
  const auto captions = read_shard_captions(dir.path());
  EXPECT_EQ(captions, (std::vector<std::string>{"c0", "c1", "c2", "c3", "c4", "c5"}));

  const auto a = seeded_order(captions, 5), b = seeded_order(captions, 5), c = seeded_order(captions, 6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, captions);
  // Fisher-Yates with std::mt19937_64(5), whose outputs the standard fixes: the
  // first draw decides which caption ends up last.
  std::mt19937_64 rng(5);
  EXPECT_EQ(a.back(), captions[rng() % 6]);
}

TEST(Captions, LengthsCountWhatTheTokenizerCuts) {
  const auto r = caption_lengths({"abc", "abcdef", "a", "abcdefghij"}, 5);
  EXPECT_EQ(r.count, 4);
  EXPECT_EQ(r.longer, 2);
  EXPECT_EQ(r.example_longer, "abcdef");
  EXPECT_EQ(r.max, 10);
  EXPECT_EQ(r.p50, 3);
  EXPECT_EQ(caption_lengths({}, 5).longer, 0);
}

}  // namespace
}  // namespace difftrain::data
