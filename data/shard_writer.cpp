#include "data/shard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <functional>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "data/hdf5_util.h"

namespace difftrain::data {
namespace {

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) throw ShardError("cannot open " + path + " for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int fsync_errno = errno;
  ::close(fd);
  if (rc != 0) throw ShardError("fsync of " + path + " failed: " + std::strerror(fsync_errno));
}

void remove_file_quietly(const std::string& path) {
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

void unlink_if_present(H5::H5File& file, const char* name) {
  if (H5Lexists(file.getId(), name, H5P_DEFAULT) > 0) file.unlink(name);
}

bool is_reserved_attribute(const std::string& name) {
  for (const char* reserved : {kFormatAttribute, kFormatVersionAttribute, kHeightAttribute,
                               kWidthAttribute, kChannelsAttribute}) {
    if (name == reserved) return true;
  }
  return false;
}

// Rewrites the shard at `path` atomically with `modify` applied: the file is copied to
// "<path>.tmp" (everything not touched by modify stays byte-identical), modified,
// fsynced and renamed over the original, then the directory is fsynced. The shard
// must hold `count` images. Throws ShardError naming the shard (leaving it as it was).
void rewrite_shard(const std::string& path, int64_t count, const std::string& what,
                   const std::function<void(H5::H5File&)>& modify) {
  const auto fail = [&](const std::string& why) { return ShardError("shard " + path + ": " + why); };
  const std::string temp_path = path + ".tmp";
  try {
    std::filesystem::copy_file(path, temp_path, std::filesystem::copy_options::overwrite_existing);
  } catch (const std::filesystem::filesystem_error& err) {
    remove_file_quietly(temp_path);
    throw fail(std::string("cannot copy to ") + temp_path + ": " + err.what());
  }
  try {
    {
      auto lock = lock_hdf5();
      try {
        H5::H5File file(temp_path, H5F_ACC_RDWR);
        if (!has_dataset(file, kImagesDataset)) throw fail(std::string("dataset '") + kImagesDataset + "' is missing");
        const std::vector<hsize_t> image_dims = dataset_shape(file.openDataSet(kImagesDataset));
        if (image_dims.empty() || image_dims[0] != static_cast<hsize_t>(count)) {
          throw fail("holds " + (image_dims.empty() ? std::string("no") : std::to_string(image_dims[0])) +
                     " images, but " + std::to_string(count) + " " + what + " were given");
        }
        modify(file);
      } catch (const H5::Exception& err) {
        throw shard_error_from(temp_path, "writing the " + what + " failed", err);
      }
    }
    fsync_path(temp_path, O_RDONLY);
    std::filesystem::rename(temp_path, path);
  } catch (const std::filesystem::filesystem_error& err) {
    remove_file_quietly(temp_path);
    throw fail(err.what());
  } catch (...) {
    remove_file_quietly(temp_path);
    throw;
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), O_RDONLY | O_DIRECTORY);
}

// A chunked dataset of `dims`, chunks of kChunkSamples rows.
H5::DataSet create_row_chunked(H5::H5File& file, const char* name, const H5::DataType& type,
                               std::vector<hsize_t> dims) {
  std::vector<hsize_t> chunk = dims;
  chunk[0] = std::min<hsize_t>(dims[0], kChunkSamples);
  H5::DSetCreatPropList props;
  props.setChunk(static_cast<int>(chunk.size()), chunk.data());
  return file.createDataSet(name, type, H5::DataSpace(static_cast<int>(dims.size()), dims.data()), props);
}

}  // namespace

bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    uint32_t cp = 0;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) extra = 1, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) extra = 2, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) extra = 3, cp = c & 0x07;
    else return false;
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[extra] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
    i += extra + 1;
  }
  return true;
}

std::string caption_defect(const std::string& caption) {
  const auto nul = caption.find('\0');
  if (nul != std::string::npos) return "contains a NUL byte (at byte " + std::to_string(nul) + ")";
  if (!is_valid_utf8(caption)) return "is not valid UTF-8";
  return "";
}

ShardWriter::ShardWriter(std::string path, ImageGeometry geometry)
    : path_(std::move(path)), temp_path_(path_ + ".tmp"), geometry_(geometry) {
  if (geometry_.height <= 0 || geometry_.width <= 0 || !is_valid_channel_count(geometry_.channels)) {
    throw ShardError("shard " + path_ + ": cannot write images of shape " + to_string(geometry_) +
                     ", format v1 stores (H, W, C) with H, W > 0 and C = 1 (grey) or 3 (RGB)");
  }
}

ShardWriter::~ShardWriter() {
  if (closed_) return;
  std::error_code ignored;
  std::filesystem::remove(temp_path_, ignored);
}

void ShardWriter::add(const uint8_t* image_hwc, const std::string& caption, std::optional<int64_t> label) {
  if (closed_) throw ShardError("shard " + path_ + ": add() after close()");
  // A variable-length HDF5 string ends at its first NUL; refuse rather than truncate.
  const std::string defect = caption_defect(caption);
  if (!defect.empty()) throw ShardError("shard " + path_ + ": caption of sample " + std::to_string(count()) + " " + defect);
  if (label.has_value() != (labels_.size() == captions_.size()) && !captions_.empty()) {
    throw ShardError("shard " + path_ + ": sample " + std::to_string(count()) +
                     (label ? " has a label but earlier samples have none" : " has no label but earlier samples have one"));
  }
  images_.insert(images_.end(), image_hwc, image_hwc + geometry_.bytes());
  captions_.push_back(caption);
  if (label) labels_.push_back(*label);
}

void ShardWriter::set_attribute(const std::string& name, const std::string& value) {
  if (is_reserved_attribute(name)) {
    throw ShardError("shard " + path_ + ": attribute '" + name + "' is set by the writer itself");
  }
  extra_attributes_.emplace_back(name, value);
}

void ShardWriter::write_temp_file() const {
  const auto n = static_cast<hsize_t>(captions_.size());
  const auto h = static_cast<hsize_t>(geometry_.height);
  const auto w = static_cast<hsize_t>(geometry_.width);
  const auto c = static_cast<hsize_t>(geometry_.channels);

  auto lock = lock_hdf5();
  try {
    H5::H5File file(temp_path_, H5F_ACC_TRUNC);

    const hsize_t image_dims[4] = {n, h, w, c};
    const hsize_t chunk_dims[4] = {std::min<hsize_t>(n, kChunkSamples), h, w, c};
    H5::DSetCreatPropList image_props;
    image_props.setChunk(4, chunk_dims);
    H5::DataSet images = file.createDataSet(kImagesDataset, H5::PredType::STD_U8LE,
                                            H5::DataSpace(4, image_dims), image_props);
    images.write(images_.data(), H5::PredType::NATIVE_UINT8);  // (N, H, W, C)

    H5::StrType caption_type(H5::PredType::C_S1, H5T_VARIABLE);
    caption_type.setCset(H5T_CSET_UTF8);
    const hsize_t caption_dims[1] = {n};
    H5::DataSet captions =
        file.createDataSet(kCaptionsDataset, caption_type, H5::DataSpace(1, caption_dims));
    std::vector<const char*> caption_ptrs;  // (N)
    caption_ptrs.reserve(captions_.size());
    for (const std::string& caption : captions_) caption_ptrs.push_back(caption.c_str());
    captions.write(caption_ptrs.data(), caption_type);

    if (!labels_.empty()) {
      H5::DataSet labels = file.createDataSet(kLabelsDataset, H5::PredType::STD_I64LE, H5::DataSpace(1, caption_dims));
      labels.write(labels_.data(), H5::PredType::NATIVE_INT64);  // (N)
    }

    write_string_attribute(file, kFormatAttribute, kShardFormatName);
    write_int_attribute(file, kFormatVersionAttribute, kShardFormatVersion);
    write_int_attribute(file, kHeightAttribute, geometry_.height);
    write_int_attribute(file, kWidthAttribute, geometry_.width);
    write_int_attribute(file, kChannelsAttribute, geometry_.channels);
    for (const auto& [name, value] : extra_attributes_) write_string_attribute(file, name, value);
  } catch (const H5::Exception& e) {
    throw shard_error_from(temp_path_, "writing failed", e);
  }
}

void ShardWriter::close() {
  if (closed_) return;
  if (captions_.empty()) {
    throw ShardError("shard " + path_ + ": no samples were added; an empty shard is not written");
  }
  try {
    write_temp_file();
    fsync_path(temp_path_, O_RDONLY);
    std::filesystem::rename(temp_path_, path_);
  } catch (const std::filesystem::filesystem_error& e) {
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);
    throw ShardError("shard " + path_ + ": " + e.what());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);
    throw;
  }
  closed_ = true;
  // The rename is durable only once the directory entry is on disk.
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), O_RDONLY | O_DIRECTORY);
  images_.clear();  // count() stays valid; the pixels are what take memory
  images_.shrink_to_fit();
}

void write_text_embeddings(const std::string& path, const TextEmbeddings& e) {
  const auto fail = [&](const std::string& what) { return ShardError("shard " + path + ": " + what); };
  const TextEmbeddingShape& shape = e.shape;
  if (e.count < 1 || shape.tokens < 1 || shape.width < 1 || shape.pooled_width < 0) {
    throw fail("cannot write text embeddings of " + std::to_string(e.count) + " samples, " + to_string(shape));
  }
  const auto n = static_cast<size_t>(e.count);
  if (e.states.size() != n * static_cast<size_t>(shape.state_values()) ||
      e.mask.size() != n * static_cast<size_t>(shape.tokens) ||
      e.pooled.size() != n * static_cast<size_t>(shape.pooled_width) ||
      e.null_states.size() != (shape.has_null ? static_cast<size_t>(shape.state_values()) : 0) ||
      e.null_mask.size() != (shape.has_null ? static_cast<size_t>(shape.tokens) : 0) ||
      e.null_pooled.size() != (shape.has_null ? static_cast<size_t>(shape.pooled_width) : 0)) {
    throw fail("text embeddings of " + std::to_string(e.count) + " samples with " + to_string(shape) + " hold " +
               std::to_string(e.states.size()) + " state, " + std::to_string(e.mask.size()) + " mask and " +
               std::to_string(e.pooled.size()) + " pooled values (null condition: " +
               std::to_string(e.null_states.size()) + ", " + std::to_string(e.null_mask.size()) + ", " +
               std::to_string(e.null_pooled.size()) + "), which do not fit");
  }
  rewrite_shard(path, e.count, "text embeddings", [&](H5::H5File& file) {
    for (const char* name : {kTextStatesDataset, kTextMaskDataset, kTextPooledDataset, kTextNullStatesDataset,
                             kTextNullMaskDataset, kTextNullPooledDataset}) {
      unlink_if_present(file, name);
    }
    for (const char* name : {kTextEncoderAttribute, kTextTokenizerAttribute, kTextNullAttribute}) {
      if (file.attrExists(name)) file.removeAttr(name);
    }
    const auto rows = static_cast<hsize_t>(e.count), l = static_cast<hsize_t>(shape.tokens),
               d = static_cast<hsize_t>(shape.width);
    const H5::FloatType half = float16_type();
    const auto create = [&](const char* name, const H5::DataType& type, std::vector<hsize_t> dims) {
      return create_row_chunked(file, name, type, std::move(dims));
    };
    // float16 is written with the file type as memory type: the bits go in unconverted.
    create(kTextStatesDataset, half, {rows, l, d}).write(e.states.data(), half);  // (N, L, D)
    create(kTextMaskDataset, H5::PredType::STD_U8LE, {rows, l}).write(e.mask.data(), H5::PredType::NATIVE_UINT8);
    if (shape.pooled_width > 0) {
      create(kTextPooledDataset, half, {rows, static_cast<hsize_t>(shape.pooled_width)})
          .write(e.pooled.data(), half);  // (N, D')
    }
    if (shape.has_null) {
      file.createDataSet(kTextNullStatesDataset, half, H5::DataSpace(3, std::vector<hsize_t>{1, l, d}.data()))
          .write(e.null_states.data(), half);  // (1, L, D)
      file.createDataSet(kTextNullMaskDataset, H5::PredType::STD_U8LE, H5::DataSpace(2, std::vector<hsize_t>{1, l}.data()))
          .write(e.null_mask.data(), H5::PredType::NATIVE_UINT8);  // (1, L)
      if (shape.pooled_width > 0) {
        const std::vector<hsize_t> dims = {1, static_cast<hsize_t>(shape.pooled_width)};
        file.createDataSet(kTextNullPooledDataset, half, H5::DataSpace(2, dims.data()))
            .write(e.null_pooled.data(), half);  // (1, D')
      }
    }
    write_string_attribute(file, kTextEncoderAttribute, e.encoder);
    write_string_attribute(file, kTextTokenizerAttribute, e.tokenizer);
    if (!e.null_kind.empty()) write_string_attribute(file, kTextNullAttribute, e.null_kind);
  });
}

void write_latents(const std::string& path, const Latents& latents) {
  const LatentShape& shape = latents.info.shape;
  if (latents.count < 1 || shape.values() < 1 || shape.channels < 1 || shape.height < 1 || shape.width < 1) {
    throw ShardError("shard " + path + ": cannot write latents of " + std::to_string(latents.count) + " samples of " +
                     to_string(shape));
  }
  if (latents.values.size() != static_cast<size_t>(latents.count) * static_cast<size_t>(shape.values())) {
    throw ShardError("shard " + path + ": latents of " + std::to_string(latents.count) + " samples of " +
                     to_string(shape) + " hold " + std::to_string(latents.values.size()) + " values, which do not fit");
  }
  if (!std::isfinite(latents.info.scale) || latents.info.scale <= 0 || !std::isfinite(latents.info.shift)) {
    throw ShardError("shard " + path + ": latent scale must be finite and > 0 and the shift finite");
  }
  rewrite_shard(path, latents.count, "latents", [&](H5::H5File& file) {
    unlink_if_present(file, kLatentsDataset);
    for (const char* name : {kLatentEncoderAttribute, kLatentScaleAttribute, kLatentShiftAttribute}) {
      if (file.attrExists(name)) file.removeAttr(name);
    }
    const H5::FloatType type = shape.dtype == LatentDtype::kFloat16 ? float16_type() : bfloat16_type();
    // Written with the file type as memory type: the bits go in unconverted.
    create_row_chunked(file, kLatentsDataset, type,
                       {static_cast<hsize_t>(latents.count), static_cast<hsize_t>(shape.channels),
                        static_cast<hsize_t>(shape.height), static_cast<hsize_t>(shape.width)})
        .write(latents.values.data(), type);  // (N, c, h, w)
    write_string_attribute(file, kLatentEncoderAttribute, latents.info.encoder);
    write_double_attribute(file, kLatentScaleAttribute, latents.info.scale);
    write_double_attribute(file, kLatentShiftAttribute, latents.info.shift);
  });
}

}  // namespace difftrain::data
