#include "data/shard_reader.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <tuple>
#include <utility>

#include "data/hdf5_util.h"

namespace difftrain::data {
namespace fs = std::filesystem;
namespace {

std::string shard(const std::string& path) { return "shard " + path + ": "; }

// A file removed between our exists() check and HDF5's open makes HDF5 say
// "can't retrieve stat info"; name the real cause instead.
ShardError vanished_or(const std::string& path, ShardError error) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return ShardError(shard(path) + "file does not exist");
  return error;
}

// Opens a shard read-only with a distinct message for each way a file can fail
// to be HDF5. The caller holds lock_hdf5().
H5::H5File open_shard_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw ShardError(shard(path) + "file does not exist");
  if (!fs::is_regular_file(path, ec)) throw ShardError(shard(path) + "is not a regular file");
  bool is_hdf5 = false;
  try {
    is_hdf5 = H5::H5File::isHdf5(path);
  } catch (const H5::Exception& e) {
    throw vanished_or(path, shard_error_from(path, "cannot read the file", e));
  }
  if (!is_hdf5) throw ShardError(shard(path) + "is not an HDF5 file (no HDF5 signature)");
  try {
    return H5::H5File(path, H5F_ACC_RDONLY);
  } catch (const H5::Exception& e) {
    throw vanished_or(
        path, shard_error_from(path, "cannot open as HDF5 (truncated or corrupt file?)", e));
  }
}

H5::DataSet open_dataset(const H5::H5File& file, const std::string& path, const char* name) {
  if (!has_dataset(file, name)) {
    throw ShardError(shard(path) + "dataset '" + name + "' is missing");
  }
  return file.openDataSet(name);
}

void check_format_attributes(const H5::H5File& file, const std::string& path) {
  const std::string format = read_string_attribute(file, path, kFormatAttribute);
  if (format != kShardFormatName) {
    throw ShardError(shard(path) + "root attribute '" + kFormatAttribute + "' is \"" + format +
                     "\", expected \"" + kShardFormatName + "\"");
  }
  const int64_t version = read_int_attribute(file, path, kFormatVersionAttribute);
  if (version != kShardFormatVersion) {
    throw ShardError(shard(path) + "root attribute '" + kFormatVersionAttribute + "' is " +
                     std::to_string(version) + ", expected " + std::to_string(kShardFormatVersion) +
                     " (the shard format version this build reads)");
  }
}

// Returns N. The (H, W, C) attributes must agree with the dataset: a writer
// that gets one of them wrong probably got the pixel layout wrong too.
int64_t check_images(const H5::H5File& file, const std::string& path,
                     const ImageGeometry& expected) {
  const H5::DataSet images = open_dataset(file, path, kImagesDataset);
  const H5::DataType type = images.getDataType();
  if (type.getClass() != H5T_INTEGER || type.getSize() != 1 ||
      H5Tget_sign(type.getId()) != H5T_SGN_NONE) {
    throw ShardError(shard(path) + "dataset '" + kImagesDataset + "' has dtype " +
                     describe_type(type) + ", expected uint8");
  }
  const std::vector<hsize_t> dims = dataset_shape(images);
  const std::vector<hsize_t> want = {static_cast<hsize_t>(expected.height),
                                     static_cast<hsize_t>(expected.width),
                                     static_cast<hsize_t>(expected.channels)};
  if (dims.size() != 4 || !std::equal(want.begin(), want.end(), dims.begin() + 1)) {
    throw ShardError(shard(path) + "dataset '" + kImagesDataset + "' has shape " +
                     describe_shape(dims) + ", expected (N, H, W, C) = (N, " +
                     std::to_string(expected.height) + ", " + std::to_string(expected.width) +
                     ", " + std::to_string(expected.channels) + ")");
  }
  const char* names[3] = {kHeightAttribute, kWidthAttribute, kChannelsAttribute};
  for (int axis = 0; axis < 3; ++axis) {
    const int64_t value = read_int_attribute(file, path, names[axis]);
    if (value != static_cast<int64_t>(dims[axis + 1])) {
      throw ShardError(shard(path) + "root attribute '" + names[axis] + "' is " +
                       std::to_string(value) + ", but dataset '" + kImagesDataset + "' has shape " +
                       describe_shape(dims) + " (N, H, W, C)");
    }
  }
  return static_cast<int64_t>(dims[0]);
}

void check_captions(const H5::H5File& file, const std::string& path, int64_t count) {
  const H5::DataSet captions = open_dataset(file, path, kCaptionsDataset);
  const H5::DataType type = captions.getDataType();
  if (type.getClass() != H5T_STRING) {
    throw ShardError(shard(path) + "dataset '" + kCaptionsDataset + "' has dtype " +
                     describe_type(type) + ", expected variable-length UTF-8 string");
  }
  const std::vector<hsize_t> dims = dataset_shape(captions);
  if (dims.size() != 1) {
    throw ShardError(shard(path) + "dataset '" + kCaptionsDataset + "' has shape " +
                     describe_shape(dims) + ", expected (" + std::to_string(count) + ",)");
  }
  if (static_cast<int64_t>(dims[0]) != count) {
    throw ShardError(shard(path) + "dataset '" + kCaptionsDataset + "' has " +
                     std::to_string(dims[0]) + " entries, expected " + std::to_string(count) +
                     " (one per image in dataset '" + kImagesDataset + "')");
  }
}

// The whole `captions` dataset in one read: a variable-length read per sample
// costs more than reading the sample's image. The caller holds lock_hdf5().
std::vector<std::string> read_all_captions(const H5::DataSet& dataset, hsize_t n) {
  std::vector<std::string> captions;  // (N)
  captions.reserve(n);
  if (n == 0) return captions;
  // The file's own string type as the memory type: HDF5 does not convert
  // between ASCII and UTF-8.
  const H5::StrType type = dataset.getStrType();
  if (type.isVariableStr()) {
    std::vector<char*> texts(n, nullptr);  // (N)
    dataset.read(texts.data(), type);
    for (const char* text : texts) captions.emplace_back(text != nullptr ? text : "");
    H5::DataSet::vlenReclaim(texts.data(), type, dataset.getSpace());
  } else {
    // Fixed-length (numpy "S<n>"): NUL-padded to the type's size.
    const size_t width = type.getSize();
    std::vector<char> buffer(n * width);  // (N, width)
    dataset.read(buffer.data(), type);
    for (hsize_t i = 0; i < n; ++i) {
      std::string text(&buffer[i * width], width);
      while (!text.empty() && text.back() == '\0') text.pop_back();
      captions.push_back(std::move(text));
    }
  }
  return captions;
}

// The optional labels: an integer dataset of rank 1 with N entries.
void check_labels(const H5::H5File& file, const std::string& path, int64_t count) {
  if (!has_dataset(file, kLabelsDataset)) return;
  const H5::DataSet labels = file.openDataSet(kLabelsDataset);
  if (labels.getTypeClass() != H5T_INTEGER) {
    throw ShardError(shard(path) + "dataset '" + kLabelsDataset + "' has dtype " + describe_type(labels.getDataType()) +
                     ", expected an integer type (int64)");
  }
  const std::vector<hsize_t> dims = dataset_shape(labels);
  if (dims.size() != 1 || static_cast<int64_t>(dims[0]) != count) {
    throw ShardError(shard(path) + "dataset '" + kLabelsDataset + "' has shape " + describe_shape(dims) +
                     ", expected (" + std::to_string(count) + ",) (one per image)");
  }
}

bool is_uint8(const H5::DataType& type) {
  return type.getClass() == H5T_INTEGER && type.getSize() == 1 && H5Tget_sign(type.getId()) == H5T_SGN_NONE;
}

std::string dtype_of(const H5::DataType& type) {
  const std::string name = describe_type(type);
  // Another 16-bit float (bfloat16) or a big-endian half reads as "float16" but is not ours.
  return name == "float16" ? "float16 with a non-IEEE-half or big-endian layout" : name;
}

// The text embeddings group: nullopt when the shard has none of its datasets;
// otherwise all-or-nothing, with dtypes, shapes and counts checked against N.
std::optional<TextEmbeddingShape> check_text_embeddings(const H5::H5File& file, const std::string& path,
                                                        int64_t count, std::string* encoder,
                                                        std::string* tokenizer) {
  const bool has_states = has_dataset(file, kTextStatesDataset);
  const bool has_mask = has_dataset(file, kTextMaskDataset);
  const bool has_pooled = has_dataset(file, kTextPooledDataset);
  if (!has_states && !has_mask && !has_pooled && !has_dataset(file, kTextNullStatesDataset) &&
      !has_dataset(file, kTextNullMaskDataset)) {
    return std::nullopt;
  }
  for (const auto& [present, name] : {std::pair{has_states, kTextStatesDataset}, std::pair{has_mask, kTextMaskDataset}}) {
    if (!present) {
      throw ShardError(shard(path) + "dataset '" + name + "' is missing; text embeddings need both '" +
                       kTextStatesDataset + "' and '" + kTextMaskDataset + "' ('" + kTextPooledDataset +
                       "' is optional)");
    }
  }
  const std::string n = std::to_string(count);
  const H5::DataSet states = file.openDataSet(kTextStatesDataset);
  if (!is_float16(states.getDataType())) {
    throw ShardError(shard(path) + "dataset '" + kTextStatesDataset + "' has dtype " +
                     dtype_of(states.getDataType()) + ", expected float16");
  }
  const std::vector<hsize_t> state_dims = dataset_shape(states);
  if (state_dims.size() != 3 || static_cast<int64_t>(state_dims[0]) != count || state_dims[1] == 0 ||
      state_dims[2] == 0) {
    throw ShardError(shard(path) + "dataset '" + kTextStatesDataset + "' has shape " + describe_shape(state_dims) +
                     ", expected (N, L, D) = (" + n + ", L, D) with L, D > 0 (one per image)");
  }
  TextEmbeddingShape shape{static_cast<int64_t>(state_dims[1]), static_cast<int64_t>(state_dims[2]), 0};
  const H5::DataSet mask = file.openDataSet(kTextMaskDataset);
  if (!is_uint8(mask.getDataType())) {
    throw ShardError(shard(path) + "dataset '" + kTextMaskDataset + "' has dtype " +
                     dtype_of(mask.getDataType()) + ", expected uint8 (1 = real token, 0 = padding)");
  }
  const std::vector<hsize_t> mask_dims = dataset_shape(mask);
  if (mask_dims != std::vector<hsize_t>{state_dims[0], state_dims[1]}) {
    throw ShardError(shard(path) + "dataset '" + kTextMaskDataset + "' has shape " + describe_shape(mask_dims) +
                     ", expected (N, L) = " + describe_shape({state_dims[0], state_dims[1]}) + " (as '" +
                     kTextStatesDataset + "')");
  }
  if (has_pooled) {
    const H5::DataSet pooled = file.openDataSet(kTextPooledDataset);
    if (!is_float16(pooled.getDataType())) {
      throw ShardError(shard(path) + "dataset '" + kTextPooledDataset + "' has dtype " +
                       dtype_of(pooled.getDataType()) + ", expected float16");
    }
    const std::vector<hsize_t> pooled_dims = dataset_shape(pooled);
    if (pooled_dims.size() != 2 || static_cast<int64_t>(pooled_dims[0]) != count || pooled_dims[1] == 0) {
      throw ShardError(shard(path) + "dataset '" + kTextPooledDataset + "' has shape " +
                       describe_shape(pooled_dims) + ", expected (N, D') = (" + n + ", D') with D' > 0");
    }
    shape.pooled_width = static_cast<int64_t>(pooled_dims[1]);
  }
  // The null condition: one row shaped like the samples', all-or-nothing.
  const bool has_null_states = has_dataset(file, kTextNullStatesDataset);
  const bool has_null_mask = has_dataset(file, kTextNullMaskDataset);
  const bool has_null_pooled = has_dataset(file, kTextNullPooledDataset);
  if (has_null_states || has_null_mask || has_null_pooled) {
    std::vector<std::tuple<bool, const char*, bool, std::vector<hsize_t>>> parts = {
        {has_null_states, kTextNullStatesDataset, true, {1, state_dims[1], state_dims[2]}},
        {has_null_mask, kTextNullMaskDataset, false, {1, state_dims[1]}}};
    if (has_pooled || has_null_pooled) {
      parts.push_back({has_null_pooled && has_pooled, kTextNullPooledDataset, true,
                       {1, static_cast<hsize_t>(shape.pooled_width)}});
    }
    for (const auto& [ok, name, half, dims] : parts) {
      if (!ok) {
        throw ShardError(shard(path) + "dataset '" + name + "' is " + (has_dataset(file, name) ? "present" : "missing") +
                         "; the null condition has '" + kTextNullStatesDataset + "', '" + kTextNullMaskDataset +
                         "' and, exactly when '" + kTextPooledDataset + "' exists, '" + kTextNullPooledDataset + "'");
      }
      const H5::DataSet dataset = file.openDataSet(name);
      if (half ? !is_float16(dataset.getDataType()) : !is_uint8(dataset.getDataType())) {
        throw ShardError(shard(path) + "dataset '" + name + "' has dtype " + dtype_of(dataset.getDataType()) +
                         ", expected " + (half ? "float16" : "uint8"));
      }
      if (dataset_shape(dataset) != dims) {
        throw ShardError(shard(path) + "dataset '" + name + "' has shape " + describe_shape(dataset_shape(dataset)) +
                         ", expected " + describe_shape(dims) + " (one row shaped like the samples')");
      }
    }
    shape.has_null = true;
  }
  *encoder = read_string_attribute(file, path, kTextEncoderAttribute);
  *tokenizer = read_string_attribute(file, path, kTextTokenizerAttribute);
  return shape;
}

// The latents: nullopt when the shard has none; otherwise float16 or bfloat16
// (N, c, h, w) with N = count, and the encoder, scale and shift attributes.
std::optional<LatentInfo> check_latents(const H5::H5File& file, const std::string& path, int64_t count) {
  if (!has_dataset(file, kLatentsDataset)) {
    for (const char* name : {kLatentScaleAttribute, kLatentShiftAttribute, kLatentEncoderAttribute}) {
      if (file.attrExists(name)) {
        throw ShardError(shard(path) + "has the root attribute '" + name + "' but no dataset '" + kLatentsDataset +
                         "'; latents are written with their attributes (difftrain encode-images)");
      }
    }
    return std::nullopt;
  }
  const H5::DataSet latents = file.openDataSet(kLatentsDataset);
  const H5::DataType type = latents.getDataType();
  LatentInfo info;
  if (is_float16(type)) {
    info.shape.dtype = LatentDtype::kFloat16;
  } else if (is_bfloat16(type)) {
    info.shape.dtype = LatentDtype::kBfloat16;
  } else {
    throw ShardError(shard(path) + "dataset '" + kLatentsDataset + "' has dtype " + dtype_of(type) +
                     ", expected float16 or bfloat16 (little-endian)");
  }
  const std::vector<hsize_t> dims = dataset_shape(latents);
  if (dims.size() != 4 || static_cast<int64_t>(dims[0]) != count || dims[1] == 0 || dims[2] == 0 || dims[3] == 0) {
    throw ShardError(shard(path) + "dataset '" + kLatentsDataset + "' has shape " + describe_shape(dims) +
                     ", expected (N, c, h, w) = (" + std::to_string(count) + ", c, h, w) with c, h, w > 0 (one per image)");
  }
  info.shape.channels = static_cast<int64_t>(dims[1]);
  info.shape.height = static_cast<int64_t>(dims[2]);
  info.shape.width = static_cast<int64_t>(dims[3]);
  info.encoder = read_string_attribute(file, path, kLatentEncoderAttribute);
  info.scale = read_double_attribute(file, path, kLatentScaleAttribute);
  info.shift = read_double_attribute(file, path, kLatentShiftAttribute);
  if (!std::isfinite(info.scale) || info.scale <= 0) {
    throw ShardError(shard(path) + "root attribute '" + kLatentScaleAttribute + "' is " + std::to_string(info.scale) +
                     ", expected a finite number > 0");
  }
  if (!std::isfinite(info.shift)) {
    throw ShardError(shard(path) + "root attribute '" + kLatentShiftAttribute + "' is not finite");
  }
  return info;
}

std::vector<std::string> shard_paths_of(const std::string& dir) {
  std::vector<std::string> paths;
  try {
    if (!fs::exists(dir)) throw ShardError("shard directory " + dir + " does not exist");
    if (!fs::is_directory(dir)) throw ShardError("shard directory " + dir + " is not a directory");
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      // "x.h5.tmp" (a shard being written) has extension ".tmp" and is skipped.
      if (entry.is_regular_file() && entry.path().extension() == kShardExtension) {
        paths.push_back(entry.path().string());
      }
    }
  } catch (const fs::filesystem_error& e) {
    throw ShardError("shard directory " + dir + ": " + e.what());
  }
  if (paths.empty()) {
    throw ShardError("shard directory " + dir + " contains no *" + kShardExtension + " shards");
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

ShardInfo validate_shard(const std::string& path, const ImageGeometry& expected) {
  if (!is_valid_channel_count(expected.channels)) {
    throw ShardError(shard(path) + "cannot read images of shape " + to_string(expected) +
                     ", format v1 stores (H, W, C) with C = 1 (grey) or 3 (RGB)");
  }
  auto lock = lock_hdf5();
  try {
    const H5::H5File file = open_shard_file(path);
    check_format_attributes(file, path);
    const int64_t count = check_images(file, path, expected);
    check_captions(file, path, count);
    check_labels(file, path, count);
    ShardInfo info{path, count, expected, std::nullopt, "", "", std::nullopt};
    info.text = check_text_embeddings(file, path, count, &info.text_encoder, &info.text_tokenizer);
    info.latents = check_latents(file, path, count);
    return info;
  } catch (const H5::Exception& e) {
    throw shard_error_from(path, "HDF5 error while validating", e);
  }
}

std::vector<ShardInfo> open_shard_directory(const std::string& dir, const ImageGeometry& expected) {
  const std::vector<std::string> paths = shard_paths_of(dir);
  std::vector<ShardInfo> shards;
  shards.reserve(paths.size());
  for (const std::string& path : paths) shards.push_back(validate_shard(path, expected));
  return shards;
}

std::optional<TextEmbeddingShape> text_embedding_shape(const std::vector<ShardInfo>& shards) {
  if (shards.empty()) return std::nullopt;
  const ShardInfo& first = shards.front();
  const auto describe = [](const ShardInfo& s) {
    return s.text ? "text embeddings " + to_string(*s.text) + " from encoder \"" + s.text_encoder + "\""
                  : std::string("no text embeddings (datasets '") + kTextStatesDataset + "', '" + kTextMaskDataset + "')";
  };
  for (const ShardInfo& s : shards) {
    const bool same = s.text.has_value() == first.text.has_value() &&
                      (!s.text || (*s.text == *first.text && s.text_encoder == first.text_encoder));
    if (!same) {
      throw ShardError(shard(s.path) + "has " + describe(s) + ", but " + first.path + " has " + describe(first) +
                       "; every shard of a directory must carry the same text embeddings");
    }
  }
  return first.text;
}

ImageGeometry shard_directory_geometry(const std::string& dir) {
  const std::string first = shard_paths_of(dir).front();
  auto lock = lock_hdf5();
  try {
    const H5::H5File file = open_shard_file(first);
    return {read_int_attribute(file, first, kHeightAttribute), read_int_attribute(file, first, kWidthAttribute),
            read_int_attribute(file, first, kChannelsAttribute)};
  } catch (const H5::Exception& e) {
    throw shard_error_from(first, "cannot read the image geometry", e);
  }
}

std::optional<std::vector<int64_t>> read_shard_labels(const std::string& path) {
  auto lock = lock_hdf5();
  try {
    const H5::H5File file = open_shard_file(path);
    if (!has_dataset(file, kLabelsDataset)) return std::nullopt;
    const int64_t count = static_cast<int64_t>(dataset_shape(file.openDataSet(kImagesDataset)).at(0));
    check_labels(file, path, count);
    std::vector<int64_t> labels(static_cast<size_t>(count));  // (N)
    if (count > 0) file.openDataSet(kLabelsDataset).read(labels.data(), H5::PredType::NATIVE_INT64);
    return labels;
  } catch (const H5::Exception& e) {
    throw shard_error_from(path, "cannot read dataset 'labels'", e);
  }
}

std::optional<std::string> read_shard_attribute(const std::string& path, const std::string& name) {
  auto lock = lock_hdf5();
  try {
    const H5::H5File file = open_shard_file(path);
    if (!file.attrExists(name)) return std::nullopt;
    return read_string_attribute(file, path, name);
  } catch (const H5::Exception& e) {
    throw shard_error_from(path, "cannot read root attribute '" + name + "'", e);
  }
}

std::optional<LatentInfo> latent_info(const std::vector<ShardInfo>& shards) {
  if (shards.empty()) return std::nullopt;
  const ShardInfo& first = shards.front();
  const auto describe = [](const ShardInfo& s) {
    if (!s.latents) return std::string("no latents (dataset '") + kLatentsDataset + "')";
    char numbers[96];
    std::snprintf(numbers, sizeof numbers, ", scale %.9g, shift %.9g", s.latents->scale, s.latents->shift);
    return "latents " + to_string(s.latents->shape) + " from encoder \"" + s.latents->encoder + "\"" + numbers;
  };
  for (const ShardInfo& s : shards) {
    const bool same = s.latents.has_value() == first.latents.has_value() &&
                      (!s.latents || (s.latents->shape == first.latents->shape &&
                                      s.latents->encoder == first.latents->encoder &&
                                      s.latents->scale == first.latents->scale && s.latents->shift == first.latents->shift));
    if (!same) {
      throw ShardError(shard(s.path) + "has " + describe(s) + ", but " + first.path + " has " + describe(first) +
                       "; every shard of a directory must carry the same latents (re-run difftrain encode-images)");
    }
  }
  return first.latents;
}

// Built by initialisation only: assigning H5:: objects goes through their
// deprecated implicit operator=, which is easy to get wrong with HDF5 ids.
struct ShardReader::Handles {
  Handles(const std::string& path, const hsize_t (&image_block)[4])
      : file(open_shard_file(path)),
        images(open_dataset(file, path, kImagesDataset)),
        image_file_space(images.getSpace()),
        image_memory_space(4, image_block) {}

  H5::H5File file;
  H5::DataSet images;                // uint8 (N, H, W, C)
  H5::DataSpace image_file_space;    // (N, H, W, C), re-selected for each read
  H5::DataSpace image_memory_space;  // (1, H, W, C)
};

struct ShardReader::TextHandles {
  TextHandles(const H5::H5File& file, bool has_pooled)
      : states(file.openDataSet(kTextStatesDataset)),
        mask(file.openDataSet(kTextMaskDataset)),
        pooled(has_pooled ? file.openDataSet(kTextPooledDataset) : H5::DataSet()),
        states_type(states.getDataType()),
        pooled_type(has_pooled ? pooled.getDataType() : H5::DataType()) {}

  H5::DataSet states;  // float16 (N, L, D)
  H5::DataSet mask;    // uint8 (N, L)
  H5::DataSet pooled;  // float16 (N, D'), or an invalid handle
  // float16 is read with the file's own type as memory type: the raw bits, no conversion.
  H5::DataType states_type, pooled_type;
};

struct ShardReader::LatentHandles {
  explicit LatentHandles(const H5::H5File& file) : latents(file.openDataSet(kLatentsDataset)), type(latents.getDataType()) {}

  H5::DataSet latents;  // 16-bit float (N, c, h, w)
  H5::DataType type;    // read as memory type: the raw bits, no conversion
};

ShardReader::ShardReader(const ShardInfo& info) : info_(info) {
  const auto n = static_cast<hsize_t>(info_.count);
  const hsize_t image_block[4] = {1, static_cast<hsize_t>(info_.geometry.height),
                                  static_cast<hsize_t>(info_.geometry.width),
                                  static_cast<hsize_t>(info_.geometry.channels)};
  auto lock = lock_hdf5();
  // A local first so that, if this throws, the HDF5 objects are released
  // before the lock is (members are destroyed after the body's locals).
  std::unique_ptr<Handles> handles;
  try {
    handles = std::make_unique<Handles>(info_.path, image_block);
    const std::vector<hsize_t> image_dims = dataset_shape(handles->images);
    const std::vector<hsize_t> want = {n, image_block[1], image_block[2], image_block[3]};
    const H5::DataSet captions = open_dataset(handles->file, info_.path, kCaptionsDataset);
    if (image_dims != want || dataset_shape(captions) != std::vector<hsize_t>{n} ||
        captions.getTypeClass() != H5T_STRING) {
      throw ShardError(shard(info_.path) + "changed since it was validated: dataset '" +
                       kImagesDataset + "' has shape " + describe_shape(image_dims) +
                       ", expected " + describe_shape(want));
    }
    captions_ = read_all_captions(captions, n);
    std::unique_ptr<TextHandles> text;
    if (info_.text) {
      std::string encoder, tokenizer;
      const auto now = check_text_embeddings(handles->file, info_.path, info_.count, &encoder, &tokenizer);
      if (now != info_.text) {
        throw ShardError(shard(info_.path) + "changed since it was validated: text embeddings are " +
                         (now ? to_string(*now) : std::string("gone")) + ", expected " + to_string(*info_.text));
      }
      text = std::make_unique<TextHandles>(handles->file, info_.text->pooled_width > 0);
    }
    text_h5_ = std::move(text);
    if (info_.latents) {
      const auto now = check_latents(handles->file, info_.path, info_.count);
      if (!now || now->shape != info_.latents->shape || now->encoder != info_.latents->encoder) {
        throw ShardError(shard(info_.path) + "changed since it was validated: latents are " +
                         (now ? to_string(now->shape) : std::string("gone")) + ", expected " +
                         to_string(info_.latents->shape));
      }
      latent_h5_ = std::make_unique<LatentHandles>(handles->file);
    }
  } catch (const H5::Exception& e) {
    throw shard_error_from(info_.path, "cannot open for reading", e);
  }
  h5_ = std::move(handles);
}

ShardReader::~ShardReader() {
  if (!h5_ && !text_h5_ && !latent_h5_) return;
  auto lock = lock_hdf5();
  latent_h5_.reset();
  text_h5_.reset();
  h5_.reset();
}

void ShardReader::check_index(int64_t index) const {
  if (index < 0 || index >= info_.count) {
    throw ShardError(shard(info_.path) + "sample index " + std::to_string(index) +
                     " is outside [0, " + std::to_string(info_.count) + ")");
  }
}

void ShardReader::read(int64_t index, uint8_t* image_hwc_out, std::string* caption_out) {
  check_index(index);
  if (caption_out != nullptr) *caption_out = captions_[static_cast<size_t>(index)];
  if (image_hwc_out == nullptr) return;
  auto lock = lock_hdf5();
  try {
    const hsize_t start[4] = {static_cast<hsize_t>(index), 0, 0, 0};
    const hsize_t count[4] = {1, static_cast<hsize_t>(info_.geometry.height),
                              static_cast<hsize_t>(info_.geometry.width),
                              static_cast<hsize_t>(info_.geometry.channels)};
    h5_->image_file_space.selectHyperslab(H5S_SELECT_SET, count, start);
    h5_->images.read(image_hwc_out, H5::PredType::NATIVE_UINT8, h5_->image_memory_space,
                     h5_->image_file_space);
  } catch (const H5::Exception& e) {
    throw shard_error_from(info_.path, "reading sample " + std::to_string(index) + " failed", e);
  }
}

void ShardReader::read_text(int64_t index, uint16_t* states_out, uint8_t* mask_out, uint16_t* pooled_out) {
  check_index(index);
  if (!text_h5_) {
    throw ShardError(shard(info_.path) + "has no text embeddings (datasets '" + kTextStatesDataset + "', '" +
                     kTextMaskDataset + "'); run `difftrain encode-text` on its directory");
  }
  const TextEmbeddingShape& shape = *info_.text;
  const auto row = static_cast<hsize_t>(index);
  auto lock = lock_hdf5();
  try {
    // One sample: the row `index` of a rank-2 or rank-3 dataset.
    const auto read_row = [&](const H5::DataSet& dataset, const H5::DataType& memory_type, void* out,
                              std::vector<hsize_t> block) {
      std::vector<hsize_t> start(block.size(), 0);
      start[0] = row;
      H5::DataSpace file_space = dataset.getSpace();
      file_space.selectHyperslab(H5S_SELECT_SET, block.data(), start.data());
      const H5::DataSpace memory_space(static_cast<int>(block.size()), block.data());
      dataset.read(out, memory_type, memory_space, file_space);
    };
    const auto l = static_cast<hsize_t>(shape.tokens), d = static_cast<hsize_t>(shape.width);
    if (states_out != nullptr) read_row(text_h5_->states, text_h5_->states_type, states_out, {1, l, d});
    if (mask_out != nullptr) read_row(text_h5_->mask, H5::PredType::NATIVE_UINT8, mask_out, {1, l});
    if (pooled_out != nullptr && shape.pooled_width > 0) {
      read_row(text_h5_->pooled, text_h5_->pooled_type, pooled_out, {1, static_cast<hsize_t>(shape.pooled_width)});
    }
  } catch (const H5::Exception& e) {
    throw shard_error_from(info_.path, "reading the text embeddings of sample " + std::to_string(index) + " failed", e);
  }
}

void ShardReader::read_latent(int64_t index, uint16_t* latent_out) {
  check_index(index);
  if (!latent_h5_) {
    throw ShardError(shard(info_.path) + "has no latents (dataset '" + kLatentsDataset +
                     "'); run `difftrain encode-images` on its directory");
  }
  const LatentShape& shape = info_.latents->shape;
  auto lock = lock_hdf5();
  try {
    const hsize_t start[4] = {static_cast<hsize_t>(index), 0, 0, 0};
    const hsize_t block[4] = {1, static_cast<hsize_t>(shape.channels), static_cast<hsize_t>(shape.height),
                              static_cast<hsize_t>(shape.width)};
    H5::DataSpace file_space = latent_h5_->latents.getSpace();
    file_space.selectHyperslab(H5S_SELECT_SET, block, start);
    const H5::DataSpace memory_space(4, block);
    latent_h5_->latents.read(latent_out, latent_h5_->type, memory_space, file_space);
  } catch (const H5::Exception& e) {
    throw shard_error_from(info_.path, "reading the latent of sample " + std::to_string(index) + " failed", e);
  }
}

void ShardReader::read_text_null(uint16_t* states_out, uint8_t* mask_out, uint16_t* pooled_out) {
  if (!info_.text || !info_.text->has_null) {
    throw ShardError(shard(info_.path) + "has no null condition (dataset '" + kTextNullStatesDataset + "')");
  }
  auto lock = lock_hdf5();
  try {
    const H5::DataSet states = h5_->file.openDataSet(kTextNullStatesDataset);
    if (states_out != nullptr) states.read(states_out, states.getDataType());
    if (mask_out != nullptr) h5_->file.openDataSet(kTextNullMaskDataset).read(mask_out, H5::PredType::NATIVE_UINT8);
    if (pooled_out != nullptr && info_.text->pooled_width > 0) {
      const H5::DataSet pooled = h5_->file.openDataSet(kTextNullPooledDataset);
      pooled.read(pooled_out, pooled.getDataType());
    }
  } catch (const H5::Exception& e) {
    throw shard_error_from(info_.path, "reading the null condition failed", e);
  }
}

}  // namespace difftrain::data
