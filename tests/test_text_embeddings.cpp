// Precomputed text embeddings in shards (data/shard_writer.h write_text_embeddings,
// data/shard_reader.h validation and read_text, data/loader.h load_text_embeddings).
#include <algorithm>
#include <filesystem>

#include "data/loader.h"
#include "data/shard_reader.h"
#include "tests/data_test_util.h"

namespace difftrain::data {
namespace {

using testing::expect_shard_error;
using testing::TempDir;

const ImageGeometry kGeometry{4, 3, 3};
const TextEmbeddingShape kShape{5, 4, 3};  // L, D, D'

// Distinct per (sample id, position) so a row from the wrong sample shows.
uint16_t state_bits(int64_t id, int64_t j) { return static_cast<uint16_t>(0x3C00 + id * 37 + j); }
uint16_t pooled_bits(int64_t id, int64_t j) { return static_cast<uint16_t>(0x4000 + id * 11 + j); }
uint8_t mask_of(int64_t id, int64_t j) { return j <= id % kShape.tokens ? 1 : 0; }

// Embeddings for samples first_id .. first_id + count - 1, as write_test_shard numbers them.
TextEmbeddings embeddings_for(int64_t first_id, int64_t count, TextEmbeddingShape shape = kShape,
                              const std::string& encoder = "enc.pt sha256:abc") {
  TextEmbeddings e;
  e.shape = shape;
  e.count = count;
  e.encoder = encoder;
  e.tokenizer = "bytes";
  for (int64_t id = first_id; id < first_id + count; ++id) {
    for (int64_t j = 0; j < shape.state_values(); ++j) e.states.push_back(state_bits(id, j));
    for (int64_t j = 0; j < shape.tokens; ++j) e.mask.push_back(mask_of(id, j));
    for (int64_t j = 0; j < shape.pooled_width; ++j) e.pooled.push_back(pooled_bits(id, j));
  }
  if (shape.has_null) {  // the null condition as sample id -1
    for (int64_t j = 0; j < shape.state_values(); ++j) e.null_states.push_back(state_bits(-1, j));
    for (int64_t j = 0; j < shape.tokens; ++j) e.null_mask.push_back(j == 0);
    for (int64_t j = 0; j < shape.pooled_width; ++j) e.null_pooled.push_back(pooled_bits(-1, j));
  }
  return e;
}

std::string shard_name(int i) { return "shard-0000" + std::to_string(i) + ".h5"; }

// Shards of 10, 7 and 13 samples (ids 0..29), each with embeddings unless `without` names it.
void write_encoded_dir(const TempDir& dir, int without = -1, int other_shape = -1) {
  int64_t first = 0;
  int i = 0;
  for (int64_t count : {10, 7, 13}) {
    testing::write_test_shard(dir.file(shard_name(i)), kGeometry, count, first);
    const TextEmbeddingShape shape = i == other_shape ? TextEmbeddingShape{6, 4, 3} : kShape;
    if (i != without) write_text_embeddings(dir.file(shard_name(i)), embeddings_for(first, count, shape));
    first += count;
    ++i;
  }
}

TEST(TextEmbeddings, WrittenEmbeddingsReadBackAndTheRestIsKept) {
  TempDir dir;
  const std::string path = dir.file("s.h5");
  testing::write_test_shard(path, kGeometry, 6, 100);
  write_text_embeddings(path, embeddings_for(100, 6));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const ShardInfo info = validate_shard(path, kGeometry);
  ASSERT_TRUE(info.text.has_value());
  EXPECT_EQ(*info.text, kShape);
  EXPECT_EQ(info.text_encoder, "enc.pt sha256:abc");
  EXPECT_EQ(info.text_tokenizer, "bytes");
  ShardReader reader(info);
  std::vector<uint8_t> image(static_cast<size_t>(kGeometry.bytes()));
  std::vector<uint16_t> states(static_cast<size_t>(kShape.state_values())), pooled(3);
  std::vector<uint8_t> mask(static_cast<size_t>(kShape.tokens));
  std::string caption;
  for (int64_t i = 0; i < 6; ++i) {
    reader.read(i, image.data(), &caption);
    EXPECT_EQ(caption, testing::caption_of(100 + i));
    EXPECT_EQ(image, testing::image_of(100 + i, kGeometry));
    reader.read_text(i, states.data(), mask.data(), pooled.data());
    for (int64_t j = 0; j < kShape.state_values(); ++j) EXPECT_EQ(states[j], state_bits(100 + i, j));
    for (int64_t j = 0; j < kShape.tokens; ++j) EXPECT_EQ(mask[j], mask_of(100 + i, j));
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(pooled[j], pooled_bits(100 + i, j));
  }
}

TEST(TextEmbeddings, PooledIsOptionalAndRewritingReplaces) {
  TempDir dir;
  const std::string path = dir.file("s.h5");
  testing::write_test_shard(path, kGeometry, 4);
  write_text_embeddings(path, embeddings_for(0, 4));
  write_text_embeddings(path, embeddings_for(0, 4, {2, 8, 0}, "other sha256:def"));
  const ShardInfo info = validate_shard(path, kGeometry);
  ASSERT_TRUE(info.text.has_value());
  EXPECT_EQ(*info.text, (TextEmbeddingShape{2, 8, 0}));
  EXPECT_EQ(info.text_encoder, "other sha256:def");
}

TEST(TextEmbeddings, NullConditionReadsBack) {
  TempDir dir;
  const std::string path = dir.file("s.h5");
  testing::write_test_shard(path, kGeometry, 4);
  TextEmbeddingShape shape = kShape;
  shape.has_null = true;
  write_text_embeddings(path, embeddings_for(0, 4, shape));
  const ShardInfo info = validate_shard(path, kGeometry);
  ASSERT_TRUE(info.text.has_value());
  EXPECT_TRUE(info.text->has_null);
  ShardReader reader(info);
  std::vector<uint16_t> states(static_cast<size_t>(kShape.state_values())), pooled(3);
  std::vector<uint8_t> mask(static_cast<size_t>(kShape.tokens));
  reader.read_text_null(states.data(), mask.data(), pooled.data());
  for (int64_t j = 0; j < kShape.state_values(); ++j) EXPECT_EQ(states[j], state_bits(-1, j));
  for (int64_t j = 0; j < kShape.tokens; ++j) EXPECT_EQ(mask[j], j == 0 ? 1 : 0);
  for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(pooled[j], pooled_bits(-1, j));
  // Without one, reading it is an error naming the shard.
  write_text_embeddings(path, embeddings_for(0, 4));
  ShardReader plain(validate_shard(path, kGeometry));
  expect_shard_error([&] { plain.read_text_null(states.data(), mask.data(), pooled.data()); }, {path, "no null condition"});
}

TEST(TextEmbeddings, WriterRefusesSizesThatDoNotFit) {
  TempDir dir;
  const std::string path = dir.file("s.h5");
  testing::write_test_shard(path, kGeometry, 4);
  expect_shard_error([&] { write_text_embeddings(path, embeddings_for(0, 5)); }, {path, "holds 4 images", "5 text embeddings"});
  TextEmbeddings short_states = embeddings_for(0, 4);
  short_states.states.pop_back();
  expect_shard_error([&] { write_text_embeddings(path, short_states); }, {path, "do not fit"});
  EXPECT_FALSE(validate_shard(path, kGeometry).text.has_value());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// Adds one dataset by hand to a valid shard, bypassing the writer's checks.
void add_raw_dataset(const std::string& path, const char* name, const H5::DataType& type, std::vector<hsize_t> dims) {
  auto lock = lock_hdf5();
  H5::H5File file(path, H5F_ACC_RDWR);
  hsize_t total = 1;
  for (hsize_t d : dims) total *= d;
  std::vector<uint8_t> zeros(total * type.getSize(), 0);
  file.createDataSet(name, type, H5::DataSpace(static_cast<int>(dims.size()), dims.data())).write(zeros.data(), type);
}

void set_encoder_attributes(const std::string& path) {
  auto lock = lock_hdf5();
  H5::H5File file(path, H5F_ACC_RDWR);
  write_string_attribute(file, kTextEncoderAttribute, "raw");
  write_string_attribute(file, kTextTokenizerAttribute, "bytes");
}

H5::FloatType half_type() {
  H5::FloatType type(H5::PredType::IEEE_F32LE);
  type.setFields(15, 10, 5, 0, 10);
  type.setSize(2);
  type.setEbias(15);
  return type;
}

TEST(TextEmbeddings, MalformedGroupsAreCleanErrors) {
  TempDir dir;
  int n = 0;
  const auto shard = [&] {
    const std::string path = dir.file("bad" + std::to_string(n++) + ".h5");
    testing::write_test_shard(path, kGeometry, 4);
    set_encoder_attributes(path);
    return path;
  };
  {  // mask alone
    const std::string path = shard();
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 5});
    expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "dataset 'text_states' is missing", "text_mask"});
  }
  {  // states alone
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, half_type(), {4, 5, 2});
    expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "dataset 'text_mask' is missing"});
  }
  {  // float32 states
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, H5::PredType::IEEE_F32LE, {4, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 5});
    expect_shard_error([&] { validate_shard(path, kGeometry); },
                       {path, "dataset 'text_states' has dtype float32, expected float16"});
  }
  {  // one row short
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, half_type(), {3, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {3, 5});
    expect_shard_error([&] { validate_shard(path, kGeometry); },
                       {path, "dataset 'text_states' has shape (3, 5, 2)", "expected (N, L, D) = (4, L, D)"});
  }
  {  // mask of another L, and of dtype bool-as-int8
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, half_type(), {4, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 6});
    expect_shard_error([&] { validate_shard(path, kGeometry); },
                       {path, "dataset 'text_mask' has shape (4, 6), expected (N, L) = (4, 5)"});
    const std::string path2 = shard();
    add_raw_dataset(path2, kTextStatesDataset, half_type(), {4, 5, 2});
    add_raw_dataset(path2, kTextMaskDataset, H5::PredType::STD_I8LE, {4, 5});
    expect_shard_error([&] { validate_shard(path2, kGeometry); }, {path2, "dataset 'text_mask' has dtype int8, expected uint8"});
  }
  {  // pooled of the wrong rank
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, half_type(), {4, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 5});
    add_raw_dataset(path, kTextPooledDataset, half_type(), {4});
    expect_shard_error([&] { validate_shard(path, kGeometry); },
                       {path, "dataset 'text_pooled' has shape (4,), expected (N, D') = (4, D')"});
  }
  {  // a null condition without its mask, and one of the wrong shape
    const std::string path = shard();
    add_raw_dataset(path, kTextStatesDataset, half_type(), {4, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 5});
    add_raw_dataset(path, kTextNullStatesDataset, half_type(), {1, 5, 2});
    expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "dataset 'text_null_mask' is missing"});
    add_raw_dataset(path, kTextNullMaskDataset, H5::PredType::STD_U8LE, {1, 4});
    expect_shard_error([&] { validate_shard(path, kGeometry); },
                       {path, "dataset 'text_null_mask' has shape (1, 4), expected (1, 5)"});
  }
  {  // no encoder attribute
    const std::string path = dir.file("noattr.h5");
    testing::write_test_shard(path, kGeometry, 4);
    add_raw_dataset(path, kTextStatesDataset, half_type(), {4, 5, 2});
    add_raw_dataset(path, kTextMaskDataset, H5::PredType::STD_U8LE, {4, 5});
    expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "root attribute 'text_encoder' is missing"});
  }
}

TEST(TextEmbeddings, DirectoryShapeMustAgreeAcrossShards) {
  TempDir all, mixed, shapes;
  write_encoded_dir(all);
  EXPECT_EQ(text_embedding_shape(open_shard_directory(all.path(), kGeometry)), kShape);
  write_encoded_dir(mixed, /*without=*/1);
  expect_shard_error([&] { text_embedding_shape(open_shard_directory(mixed.path(), kGeometry)); },
                     {shard_name(1), "has no text embeddings", shard_name(0), "L=5 D=4 D'=3"});
  write_encoded_dir(shapes, -1, /*other_shape=*/2);
  expect_shard_error([&] { text_embedding_shape(open_shard_directory(shapes.path(), kGeometry)); },
                     {shard_name(2), "L=6 D=4 D'=3", "L=5 D=4 D'=3"});
}

LoaderOptions options(const TempDir& dir, bool text, int rank = 0, int world = 1) {
  LoaderOptions o;
  o.shard_dir = dir.path();
  o.geometry = kGeometry;
  o.batch_size = 4;
  o.rank = rank;
  o.world_size = world;
  o.seed = 3;
  o.prefetch_batches = 2;
  o.load_text_embeddings = text;
  return o;
}

TEST(TextEmbeddings, LoaderRowsBelongToTheirSamplesAndBatchesAreUnchanged) {
  TempDir dir;
  write_encoded_dir(dir);
  for (int rank = 0; rank < 2; ++rank) {
    Loader with(options(dir, true, rank, 2), {0, 1}), without(options(dir, false, rank, 2), {0, 1});
    EXPECT_EQ(with.text_shape(), kShape);
    for (int b = 0; b < 7; ++b) {  // across an epoch boundary (15 samples per rank: 3 batches)
      const Batch t = with.next(), plain = without.next();
      EXPECT_EQ(t.position, plain.position);
      EXPECT_EQ(t.captions, plain.captions);
      EXPECT_EQ(t.images, plain.images);
      EXPECT_TRUE(plain.text_states.empty() && plain.text_mask.empty() && plain.text_pooled.empty());
      ASSERT_EQ(t.text_states.size(), static_cast<size_t>(t.size * kShape.state_values()));
      ASSERT_EQ(t.text_mask.size(), static_cast<size_t>(t.size * kShape.tokens));
      ASSERT_EQ(t.text_pooled.size(), static_cast<size_t>(t.size * kShape.pooled_width));
      for (int64_t k = 0; k < t.size; ++k) {
        const std::string& caption = t.captions[static_cast<size_t>(k)];
        const int64_t id = std::stoll(caption.substr(caption.find(' ') + 1));
        for (int64_t j = 0; j < kShape.state_values(); ++j) {
          ASSERT_EQ(t.text_states[k * kShape.state_values() + j], state_bits(id, j)) << caption;
        }
        for (int64_t j = 0; j < kShape.tokens; ++j) ASSERT_EQ(t.text_mask[k * kShape.tokens + j], mask_of(id, j));
        for (int64_t j = 0; j < kShape.pooled_width; ++j) {
          ASSERT_EQ(t.text_pooled[k * kShape.pooled_width + j], pooled_bits(id, j));
        }
      }
    }
  }
}

TEST(TextEmbeddings, LoaderAskedForEmbeddingsRefusesShardsWithoutThem) {
  TempDir none, mixed;
  testing::write_test_shard(none.file("a.h5"), kGeometry, 10);
  expect_shard_error([&] { Loader loader(options(none, true), {0, 0}); }, {none.path(), "carry no text embeddings", "encode-text"});
  Loader fine(options(none, false), {0, 0});  // not asked: shards without embeddings load as before
  EXPECT_EQ(fine.next().size, 4);
  write_encoded_dir(mixed, /*without=*/2);
  expect_shard_error([&] { Loader loader(options(mixed, true), {0, 0}); }, {shard_name(2), "has no text embeddings"});
}

}  // namespace
}  // namespace difftrain::data
