// Helpers shared by the data/ tests: a scratch directory, a deterministic
// good shard, and a raw HDF5 writer for deliberately bad shards.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "data/hdf5_util.h"
#include "data/shard_format.h"
#include "data/shard_writer.h"

namespace difftrain::data::testing {

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "difftrain-data-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Byte j of sample `id`'s image: distinct per sample, so a swapped image or a
// mismatched (image, caption) pair shows.
inline uint8_t pixel_of(int64_t id, int64_t j) {
  return static_cast<uint8_t>((id * 31 + j * 7) % 251);
}
inline std::vector<uint8_t> image_of(int64_t id, const ImageGeometry& g) {
  std::vector<uint8_t> image(static_cast<size_t>(g.bytes()));  // (H, W, C)
  for (int64_t j = 0; j < g.bytes(); ++j) image[static_cast<size_t>(j)] = pixel_of(id, j);
  return image;
}
inline std::string caption_of(int64_t id) { return "sample " + std::to_string(id); }

// A valid shard holding samples first_id .. first_id + count - 1.
inline void write_test_shard(const std::string& path, const ImageGeometry& g, int64_t count,
                             int64_t first_id = 0) {
  ShardWriter writer(path, g);
  for (int64_t id = first_id; id < first_id + count; ++id) {
    writer.add(image_of(id, g).data(), caption_of(id));
  }
  writer.close();
}

// What write_raw_shard puts in the file; the defaults make a valid 4-sample
// (8, 8, 3) shard, and each test breaks one thing.
struct RawShard {
  const H5::PredType* image_type = &H5::PredType::STD_U8LE;
  std::vector<hsize_t> image_dims = {4, 8, 8, 3};
  hsize_t caption_count = 4;
  bool fixed_length_captions = false;
  bool captions_as_integers = false;
  std::string format = kShardFormatName;
  int64_t format_version = kShardFormatVersion;
  bool geometry_attributes = true;
};

// Writes with the HDF5 C++ API directly, bypassing ShardWriter's checks.
inline void write_raw_shard(const std::string& path, const RawShard& raw) {
  auto lock = lock_hdf5();
  H5::H5File file(path, H5F_ACC_TRUNC);
  H5::DataSet images = file.createDataSet(
      kImagesDataset, *raw.image_type,
      H5::DataSpace(static_cast<int>(raw.image_dims.size()), raw.image_dims.data()));
  if (raw.image_type == &H5::PredType::STD_U8LE) {
    hsize_t total = 1;
    for (hsize_t d : raw.image_dims) total *= d;
    std::vector<uint8_t> pixels(total);  // image_dims
    for (hsize_t j = 0; j < total; ++j) pixels[j] = static_cast<uint8_t>(j % 251);
    images.write(pixels.data(), H5::PredType::NATIVE_UINT8);
  }

  const hsize_t caption_dims[1] = {raw.caption_count};
  const H5::DataSpace caption_space(1, caption_dims);
  std::vector<std::string> texts;  // (caption_count)
  for (hsize_t i = 0; i < raw.caption_count; ++i)
    texts.push_back(caption_of(static_cast<int64_t>(i)));
  if (raw.captions_as_integers) {
    file.createDataSet(kCaptionsDataset, H5::PredType::STD_I64LE, caption_space);
  } else if (raw.fixed_length_captions) {
    // What h5py writes for np.array([b"..."]): NUL-padded, ASCII, fixed size.
    const size_t width = 12;
    H5::StrType type(H5::PredType::C_S1, width);
    type.setStrpad(H5T_STR_NULLPAD);
    std::vector<char> buffer(raw.caption_count * width, '\0');  // (caption_count, width)
    for (hsize_t i = 0; i < raw.caption_count; ++i) texts[i].copy(&buffer[i * width], width);
    file.createDataSet(kCaptionsDataset, type, caption_space).write(buffer.data(), type);
  } else {
    H5::StrType type(H5::PredType::C_S1, H5T_VARIABLE);
    type.setCset(H5T_CSET_UTF8);
    std::vector<const char*> pointers;  // (caption_count)
    for (const std::string& text : texts) pointers.push_back(text.c_str());
    file.createDataSet(kCaptionsDataset, type, caption_space).write(pointers.data(), type);
  }

  write_string_attribute(file, kFormatAttribute, raw.format);
  write_int_attribute(file, kFormatVersionAttribute, raw.format_version);
  if (raw.geometry_attributes && raw.image_dims.size() == 4) {
    write_int_attribute(file, kHeightAttribute, static_cast<int64_t>(raw.image_dims[1]));
    write_int_attribute(file, kWidthAttribute, static_cast<int64_t>(raw.image_dims[2]));
    write_int_attribute(file, kChannelsAttribute, static_cast<int64_t>(raw.image_dims[3]));
  }
}

// Runs `action`, which must throw ShardError whose message contains every one
// of `parts` (the file, the culprit, what was found, what was expected).
inline void expect_shard_error(const std::function<void()>& action,
                               std::initializer_list<std::string> parts) {
  try {
    action();
  } catch (const ShardError& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" does not contain \"" << part << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ShardError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected ShardError, nothing was thrown";
}

}  // namespace difftrain::data::testing
