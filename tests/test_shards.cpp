// Shard format v1: ShardWriter -> validate_shard/ShardReader round trip, and a
// clean ShardError naming the file and the culprit for each kind of bad input.
#include <filesystem>
#include <fstream>

#include "data/shard_reader.h"
#include "data/shard_writer.h"
#include "tests/data_test_util.h"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using testing::expect_shard_error;
using testing::RawShard;
using testing::TempDir;

// Non-square, so a swapped H and W shows.
const ImageGeometry kGeometry{5, 7, 3};
const ImageGeometry kRawGeometry{8, 8, 3};

TEST(ShardFormat, WriteReadRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("round.h5");
  // 70 samples: one full chunk of 64 and a partial one.
  std::vector<std::string> captions;
  ShardWriter writer(path, kGeometry);
  for (int64_t i = 0; i < 70; ++i) {
    captions.push_back(i == 3 ? "ein grünes Dreieck ✓" : testing::caption_of(i));
    writer.add(testing::image_of(i, kGeometry).data(), captions.back());
  }
  EXPECT_FALSE(fs::exists(path)) << "nothing appears under the final name before close()";
  writer.close();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  const ShardInfo info = validate_shard(path, kGeometry);
  EXPECT_EQ(info.path, path);
  EXPECT_EQ(info.count, 70);
  EXPECT_EQ(info.geometry, kGeometry);

  ShardReader reader(info);
  ASSERT_EQ(reader.size(), 70);
  std::vector<uint8_t> image(static_cast<size_t>(kGeometry.bytes()));  // (H, W, C)
  std::string caption;
  for (int64_t i : {0, 3, 63, 64, 69, 1}) {  // out of order: random access
    reader.read(i, image.data(), &caption);
    EXPECT_EQ(image, testing::image_of(i, kGeometry)) << "sample " << i;
    EXPECT_EQ(caption, captions[static_cast<size_t>(i)]);
  }
  expect_shard_error([&] { reader.read(70, image.data(), &caption); }, {path, "70"});
}

TEST(ShardFormat, WriterWritesFormatAttributes) {
  TempDir dir;
  const std::string path = dir.file("attrs.h5");
  testing::write_test_shard(path, kGeometry, 3);
  auto lock = lock_hdf5();
  const H5::H5File file(path, H5F_ACC_RDONLY);
  EXPECT_EQ(read_string_attribute(file, path, kFormatAttribute), "difftrain-shard");
  EXPECT_EQ(read_int_attribute(file, path, kFormatVersionAttribute), 1);
  EXPECT_EQ(read_int_attribute(file, path, kHeightAttribute), 5);
  EXPECT_EQ(read_int_attribute(file, path, kWidthAttribute), 7);
  EXPECT_EQ(read_int_attribute(file, path, kChannelsAttribute), 3);
  const H5::DataSet images = file.openDataSet(kImagesDataset);
  EXPECT_EQ(describe_type(images.getDataType()), "uint8");
  EXPECT_EQ(describe_shape(dataset_shape(images)), "(3, 5, 7, 3)");
  const H5::DataSet captions = file.openDataSet(kCaptionsDataset);
  EXPECT_TRUE(captions.getStrType().isVariableStr());
  EXPECT_EQ(captions.getStrType().getCset(), H5T_CSET_UTF8);
}

TEST(ShardFormat, UnclosedWriterLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.file("abandoned.h5");
  {
    ShardWriter writer(path, kGeometry);
    writer.add(testing::image_of(0, kGeometry).data(), "x");
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(ShardFormat, WriterRefusesEmptyShardAndBadGeometry) {
  TempDir dir;
  const std::string path = dir.file("empty.h5");
  ShardWriter writer(path, kGeometry);
  expect_shard_error([&] { writer.close(); }, {path, "no samples"});
  EXPECT_FALSE(fs::exists(path));
  expect_shard_error(
      [&] {
        ShardWriter rgba(dir.file("rgba.h5"), ImageGeometry{8, 8, 4});
      },
      {"rgba.h5", "(8, 8, 4)"});
}

TEST(ShardFormat, ReaderAcceptsFixedLengthByteCaptions) {
  TempDir dir;
  const std::string path = dir.file("fixed.h5");
  RawShard raw;
  raw.fixed_length_captions = true;
  testing::write_raw_shard(path, raw);
  ShardReader reader(validate_shard(path, kRawGeometry));
  std::string caption;
  for (int64_t i = 0; i < 4; ++i) {
    reader.read(i, nullptr, &caption);
    EXPECT_EQ(caption, testing::caption_of(i)) << "trailing NULs are trimmed";
  }
}

TEST(ShardErrors, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("absent.h5");
  expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "does not exist"});
}

TEST(ShardErrors, TruncatedFile) {
  TempDir dir;
  const std::string path = dir.file("truncated.h5");
  testing::write_test_shard(path, kGeometry, 100);
  fs::resize_file(path, fs::file_size(path) / 2);
  expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "truncated"});
}

TEST(ShardErrors, NotHdf5) {
  TempDir dir;
  const std::string path = dir.file("notes.h5");
  std::ofstream(path) << "not an HDF5 file\n";
  expect_shard_error([&] { validate_shard(path, kGeometry); }, {path, "not an HDF5 file"});
  const std::string empty = dir.file("empty.h5");
  std::ofstream{empty};
  expect_shard_error([&] { validate_shard(empty, kGeometry); }, {empty});
}

TEST(ShardErrors, ImagesWrongDtype) {
  TempDir dir;
  const std::string path = dir.file("float.h5");
  RawShard raw;
  raw.image_type = &H5::PredType::IEEE_F32LE;
  testing::write_raw_shard(path, raw);
  expect_shard_error([&] { validate_shard(path, kRawGeometry); },
                     {"shard " + path + ": dataset 'images' has dtype float32, expected uint8"});
}

TEST(ShardErrors, ImagesWrongRank) {
  TempDir dir;
  const std::string path = dir.file("rank3.h5");
  RawShard raw;
  raw.image_dims = {4, 8, 8};
  testing::write_raw_shard(path, raw);
  expect_shard_error(
      [&] { validate_shard(path, kRawGeometry); },
      {path, "dataset 'images' has shape (4, 8, 8), expected (N, H, W, C) = (N, 8, 8, 3)"});
}

TEST(ShardErrors, ImagesWrongChannels) {
  TempDir dir;
  const std::string path = dir.file("rgba.h5");
  RawShard raw;
  raw.image_dims = {4, 8, 8, 4};
  testing::write_raw_shard(path, raw);
  expect_shard_error([&] { validate_shard(path, kRawGeometry); },
                     {path, "dataset 'images' has shape (4, 8, 8, 4)", "(N, 8, 8, 3)"});
}

TEST(ShardErrors, ImagesWrongSize) {
  TempDir dir;
  const std::string path = dir.file("small.h5");
  testing::write_raw_shard(path, RawShard{});
  expect_shard_error(
      [&] {
        validate_shard(path, ImageGeometry{16, 16, 3});
      },
      {path, "dataset 'images' has shape (4, 8, 8, 3)", "(N, 16, 16, 3)"});
}

TEST(ShardErrors, WrongFormatVersion) {
  TempDir dir;
  const std::string path = dir.file("v2.h5");
  RawShard raw;
  raw.format_version = 2;
  testing::write_raw_shard(path, raw);
  expect_shard_error([&] { validate_shard(path, kRawGeometry); },
                     {path, "root attribute 'format_version' is 2, expected 1"});
}

TEST(ShardErrors, WrongFormatName) {
  TempDir dir;
  const std::string path = dir.file("other.h5");
  RawShard raw;
  raw.format = "something-else";
  testing::write_raw_shard(path, raw);
  expect_shard_error(
      [&] { validate_shard(path, kRawGeometry); },
      {path, "root attribute 'format' is \"something-else\", expected \"difftrain-shard\""});
}

TEST(ShardErrors, MissingGeometryAttributes) {
  TempDir dir;
  const std::string path = dir.file("noattrs.h5");
  RawShard raw;
  raw.geometry_attributes = false;
  testing::write_raw_shard(path, raw);
  expect_shard_error([&] { validate_shard(path, kRawGeometry); },
                     {path, "root attribute 'height' is missing"});
}

TEST(ShardErrors, CaptionCountMismatch) {
  TempDir dir;
  const std::string path = dir.file("captions.h5");
  RawShard raw;
  raw.caption_count = 3;
  testing::write_raw_shard(path, raw);
  expect_shard_error([&] { validate_shard(path, kRawGeometry); },
                     {path, "dataset 'captions' has 3 entries, expected 4"});
}

TEST(ShardErrors, CaptionsNotStrings) {
  TempDir dir;
  const std::string path = dir.file("intcaptions.h5");
  RawShard raw;
  raw.captions_as_integers = true;
  testing::write_raw_shard(path, raw);
  expect_shard_error(
      [&] { validate_shard(path, kRawGeometry); },
      {path, "dataset 'captions' has dtype int64, expected variable-length UTF-8 string"});
}

TEST(ShardDirectory, MissingOrEmpty) {
  TempDir dir;
  const std::string missing = dir.file("nowhere");
  expect_shard_error([&] { open_shard_directory(missing, kGeometry); },
                     {missing, "does not exist"});
  // A shard still being written ("*.h5.tmp") does not count.
  std::ofstream(dir.file("shard-00000.h5.tmp")) << "partial";
  expect_shard_error([&] { open_shard_directory(dir.path(), kGeometry); },
                     {dir.path(), "contains no *.h5 shards"});
}

TEST(ShardDirectory, SortedByNameAndEachValidated) {
  TempDir dir;
  testing::write_test_shard(dir.file("shard-b.h5"), kGeometry, 3);
  testing::write_test_shard(dir.file("shard-a.h5"), kGeometry, 5);
  std::ofstream(dir.file("README.txt")) << "ignored";
  const std::vector<ShardInfo> shards = open_shard_directory(dir.path(), kGeometry);
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].path, dir.file("shard-a.h5"));
  EXPECT_EQ(shards[0].count, 5);
  EXPECT_EQ(shards[1].path, dir.file("shard-b.h5"));
  EXPECT_EQ(shards[1].count, 3);

  RawShard raw;
  raw.format_version = 7;
  testing::write_raw_shard(dir.file("shard-c.h5"), raw);
  expect_shard_error([&] { open_shard_directory(dir.path(), kGeometry); },
                     {dir.file("shard-c.h5"), "format_version"});
}

TEST(ShardDirectory, ReaderReportsShardDeletedBeforeOpen) {
  TempDir dir;
  const std::string path = dir.file("gone.h5");
  testing::write_test_shard(path, kGeometry, 2);
  const ShardInfo info = validate_shard(path, kGeometry);
  fs::remove(path);
  expect_shard_error([&] { ShardReader reader(info); }, {path, "does not exist"});
}

}  // namespace
TEST(ShardFormat, GreyShardsWithLabelsRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("grey.h5");
  const ImageGeometry grey{6, 5, 1};
  ShardWriter writer(path, grey);
  for (int64_t i = 0; i < 10; ++i) writer.add(testing::image_of(i, grey).data(), testing::caption_of(i), i % 4);
  writer.set_attribute(kLabelNamesAttribute, R"(["a", "b", "c", "d"])");
  writer.close();

  EXPECT_EQ(shard_directory_geometry(dir.path()), grey);
  const ShardInfo info = validate_shard(path, grey);
  ShardReader reader(info);
  std::vector<uint8_t> image(static_cast<size_t>(grey.bytes()));  // (H, W, 1)
  reader.read(7, image.data(), nullptr);
  EXPECT_EQ(image, testing::image_of(7, grey));
  const auto labels = read_shard_labels(path);
  ASSERT_TRUE(labels.has_value());
  EXPECT_EQ(*labels, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(read_shard_attribute(path, kLabelNamesAttribute).value(), R"(["a", "b", "c", "d"])");
  // A grey shard is not an RGB one.
  expect_shard_error([&] { validate_shard(path, ImageGeometry{6, 5, 3}); }, {path, "(N, 6, 5, 3)"});
}

TEST(ShardFormat, UnlabelledShardHasNoLabelsAndMixedLabelsAreRefused) {
  TempDir dir;
  const std::string path = dir.file("plain.h5");
  testing::write_test_shard(path, kGeometry, 3);
  EXPECT_FALSE(read_shard_labels(path).has_value());
  ShardWriter writer(dir.file("mixed.h5"), kGeometry);
  writer.add(testing::image_of(0, kGeometry).data(), "x", 1);
  expect_shard_error([&] { writer.add(testing::image_of(1, kGeometry).data(), "y"); },
                     {"mixed.h5", "sample 1 has no label"});
}

}  // namespace difftrain::data
