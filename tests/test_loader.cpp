// Loader: per-rank shares, epoch orders, exact resume, and errors from the
// reader thread surfacing from next().
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "data/loader.h"
#include "tests/data_test_util.h"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using testing::expect_shard_error;
using testing::TempDir;

const ImageGeometry kGeometry{4, 3, 3};

// Sample ids from the captions, after checking every image belongs to its caption.
std::vector<int64_t> ids_of(const Batch& batch) {
  EXPECT_EQ(batch.size, static_cast<int64_t>(batch.captions.size()));
  EXPECT_EQ(batch.images.size(), static_cast<size_t>(batch.size * kGeometry.bytes()));
  std::vector<int64_t> ids;
  for (int64_t k = 0; k < batch.size; ++k) {
    const std::string& caption = batch.captions[static_cast<size_t>(k)];
    const int64_t id = std::stoll(caption.substr(caption.find(' ') + 1));
    const std::vector<uint8_t> expected = testing::image_of(id, kGeometry);
    EXPECT_TRUE(
        std::equal(expected.begin(), expected.end(), batch.images.begin() + k * kGeometry.bytes()))
        << "image of batch slot " << k << " is not the image of \"" << caption << "\"";
    ids.push_back(id);
  }
  return ids;
}

// Three shards of uneven size (30 samples), ids 0..29 in file-name order.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int64_t first = 0;
    for (int64_t count : {10, 7, 13}) {
      testing::write_test_shard(dir_.file("shard-0000" + std::to_string(shard_++) + ".h5"),
                                kGeometry, count, first);
      first += count;
    }
  }

  LoaderOptions options(int64_t batch_size, int rank = 0, int world_size = 1,
                        uint64_t seed = 7) const {
    LoaderOptions o;
    o.shard_dir = dir_.path();
    o.geometry = kGeometry;
    o.batch_size = batch_size;
    o.rank = rank;
    o.world_size = world_size;
    o.seed = seed;
    o.prefetch_batches = 2;
    return o;
  }

  TempDir dir_;
  int shard_ = 0;
};

std::vector<Batch> take(Loader& loader, int64_t n) {
  std::vector<Batch> batches;
  for (int64_t i = 0; i < n; ++i) batches.push_back(loader.next());
  return batches;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].position, b[i].position) << "batch " << i;
    EXPECT_EQ(a[i].captions, b[i].captions) << "batch " << i;
    EXPECT_EQ(a[i].images, b[i].images) << "batch " << i;
  }
}

// world 3 divides 30; world 4 leaves floor(30 / 4) * 4 = 28 samples per epoch.
TEST_F(LoaderTest, RankSharesAreDisjointAndCoverFloorNOverWorldTimesWorld) {
  for (const auto& [world, batch_size] : std::vector<std::pair<int, int64_t>>{{3, 5}, {4, 7}}) {
    std::set<int64_t> seen;
    int64_t taken = 0;
    for (int rank = 0; rank < world; ++rank) {
      Loader loader(options(batch_size, rank, world), LoaderPosition{});
      EXPECT_EQ(loader.dataset_size(), 30);
      EXPECT_EQ(loader.batches_per_epoch(), (30 / world) / batch_size);
      for (const Batch& batch : take(loader, loader.batches_per_epoch())) {
        EXPECT_EQ(batch.position.epoch, 0);
        for (int64_t id : ids_of(batch)) {
          EXPECT_TRUE(seen.insert(id).second)
              << "sample " << id << " given twice (world " << world << ")";
          ++taken;
        }
      }
    }
    EXPECT_EQ(taken, (30 / world) * world) << "world " << world;
    // Exactly the first floor(N / world) * world entries of the shared permutation.
    const std::vector<int64_t> perm = epoch_permutation(30, 7, 0);
    EXPECT_EQ(seen, std::set<int64_t>(perm.begin(), perm.begin() + taken)) << "world " << world;
  }
}

TEST_F(LoaderTest, EpochsHaveDifferentOrdersOfTheSameSamples) {
  Loader loader(options(5), LoaderPosition{});
  ASSERT_EQ(loader.batches_per_epoch(), 6);
  std::vector<int64_t> epoch0, epoch1;
  for (const Batch& b : take(loader, 6)) {
    EXPECT_EQ(b.position.epoch, 0);
    for (int64_t id : ids_of(b)) epoch0.push_back(id);
  }
  for (const Batch& b : take(loader, 6)) {
    EXPECT_EQ(b.position.epoch, 1);
    for (int64_t id : ids_of(b)) epoch1.push_back(id);
  }
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(std::set<int64_t>(epoch0.begin(), epoch0.end()),
            std::set<int64_t>(epoch1.begin(), epoch1.end()));
  EXPECT_EQ(std::set<int64_t>(epoch0.begin(), epoch0.end()).size(), 30u);
}

TEST_F(LoaderTest, SameSeedSameOrderOtherSeedOtherOrder) {
  Loader a(options(5, 0, 1, 99), LoaderPosition{});
  Loader b(options(5, 0, 1, 99), LoaderPosition{});
  Loader c(options(5, 0, 1, 100), LoaderPosition{});
  const std::vector<Batch> from_a = take(a, 12);
  expect_same_batches(from_a, take(b, 12));
  const std::vector<Batch> from_c = take(c, 12);
  bool any_different = false;
  for (size_t i = 0; i < from_a.size(); ++i)
    any_different |= from_a[i].captions != from_c[i].captions;
  EXPECT_TRUE(any_different);
}

TEST_F(LoaderTest, ResumingFromAPositionGivesIdenticalBatches) {
  // Two ranks of two, batch 4: 3 batches per epoch; 10 batches span 4 epochs.
  for (int rank = 0; rank < 2; ++rank) {
    Loader uninterrupted(options(4, rank, 2), LoaderPosition{});
    ASSERT_EQ(uninterrupted.batches_per_epoch(), 3);
    const std::vector<Batch> reference = take(uninterrupted, 10);
    for (int64_t i = 0; i < 10; ++i) {
      EXPECT_EQ(reference[static_cast<size_t>(i)].position, (LoaderPosition{i / 3, i % 3}));
    }
    for (int64_t k : {1, 3, 5, 7}) {
      const LoaderPosition at = reference[static_cast<size_t>(k)].position;
      Loader resumed(options(4, rank, 2), at);
      expect_same_batches(take(resumed, 10 - k),
                          std::vector<Batch>(reference.begin() + k, reference.end()));
    }
    // {epoch, batches_per_epoch} (what "last batch + 1" gives) is the next epoch's start.
    Loader carried(options(4, rank, 2), LoaderPosition{0, 3});
    expect_same_batches(take(carried, 2),
                        std::vector<Batch>(reference.begin() + 3, reference.begin() + 5));
  }
}

TEST_F(LoaderTest, ErrorInReaderThreadSurfacesFromNext) {
  // Eight small shards; with batch 1 and prefetch 1 the reader thread has
  // opened at most two of them (the batch queued and the one waiting) when
  // the files go, so the epoch must reach a shard it cannot open.
  TempDir many;
  for (int s = 0; s < 8; ++s) {
    testing::write_test_shard(many.file("shard-0" + std::to_string(s) + ".h5"), kGeometry, 4,
                              s * 4);
  }
  LoaderOptions o = options(1);
  o.shard_dir = many.path();
  o.prefetch_batches = 1;
  Loader loader(o, LoaderPosition{});
  ASSERT_EQ(loader.batches_per_epoch(), 32);
  for (int s = 0; s < 8; ++s) fs::remove(many.file("shard-0" + std::to_string(s) + ".h5"));
  int64_t delivered = 0;
  expect_shard_error(
      [&] {
        for (; delivered < 32; ++delivered) loader.next();
      },
      {many.path(), "does not exist"});
  EXPECT_LT(delivered, 32);
  // The error stays: later calls throw again instead of blocking.
  EXPECT_THROW(loader.next(), ShardError);
}

TEST_F(LoaderTest, DestructorStopsAReaderBlockedOnAFullQueue) {
  for (int i = 0; i < 20; ++i) {
    Loader loader(options(1), LoaderPosition{i, i});
    if (i % 2 == 0) loader.next();
  }
}

TEST_F(LoaderTest, NoCompleteBatchIsAnError) {
  expect_shard_error([&] { Loader loader(options(8, 0, 4), LoaderPosition{}); },
                     {"30 samples", "world_size 4", "= 7 samples per rank", "batch_size 8"});
}

TEST_F(LoaderTest, BadShardsFailInTheConstructor) {
  expect_shard_error(
      [&] {
        LoaderOptions o = options(2);
        o.geometry = ImageGeometry{8, 8, 3};
        Loader loader(o, LoaderPosition{});
      },
      {dir_.file("shard-00000.h5"), "dataset 'images'"});
  expect_shard_error(
      [&] {
        LoaderOptions o = options(2);
        o.shard_dir = dir_.file("nowhere");
        Loader loader(o, LoaderPosition{});
      },
      {"nowhere", "does not exist"});
}

TEST_F(LoaderTest, NonsenseOptionsAreRejected) {
  EXPECT_THROW(Loader(options(0), LoaderPosition{}), std::invalid_argument);
  EXPECT_THROW(Loader(options(2, 2, 2), LoaderPosition{}), std::invalid_argument);
  EXPECT_THROW(Loader(options(2), LoaderPosition{-1, 0}), std::invalid_argument);
}

TEST(SampleOrder, PermutationIsAPermutationAndDependsOnSeedAndEpoch) {
  const std::vector<int64_t> p = epoch_permutation(1000, 5, 3);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_EQ(p, epoch_permutation(1000, 5, 3));
  EXPECT_NE(p, epoch_permutation(1000, 5, 4));
  EXPECT_NE(p, epoch_permutation(1000, 6, 3));
}

}  // namespace
}  // namespace difftrain::data
