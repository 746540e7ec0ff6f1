#include "eval/prompt_embeddings.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "data/captions.h"
#include "data/hdf5_util.h"
#include "data/shard_reader.h"
#include "eval/digest.h"
#include "model/frozen_text_encoder.h"

namespace difftrain::eval {
namespace fs = std::filesystem;
namespace {

using data::kTextNullAttribute;
constexpr const char* kPromptsFormat = "difftrain-prompts";

torch::Tensor round_to_half(const torch::Tensor& t) { return t.to(torch::kHalf).to(torch::kFloat32); }

std::string shape_text(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + (t.dim() == 1 ? ",)" : ")");
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw std::runtime_error("prompt embeddings file " + path + ": " + what);
}

// The caller holds lock_hdf5().
std::vector<std::string> read_strings(const H5::DataSet& dataset, hsize_t n) {
  std::vector<std::string> out;
  const H5::StrType type = dataset.getStrType();
  if (type.isVariableStr()) {
    std::vector<char*> texts(n, nullptr);
    if (n > 0) dataset.read(texts.data(), type);
    for (const char* t : texts) out.emplace_back(t ? t : "");
    if (n > 0) H5::DataSet::vlenReclaim(texts.data(), type, dataset.getSpace());
  } else {
    const size_t width = type.getSize();
    std::vector<char> buffer(n * width);
    if (n > 0) dataset.read(buffer.data(), type);
    for (hsize_t i = 0; i < n; ++i) {
      std::string text(&buffer[i * width], width);
      while (!text.empty() && text.back() == '\0') text.pop_back();
      out.push_back(std::move(text));
    }
  }
  return out;
}

bool is_uint8(const H5::DataType& type) {
  return type.getClass() == H5T_INTEGER && type.getSize() == 1 && H5Tget_sign(type.getId()) == H5T_SGN_NONE;
}

// A float16 dataset of `dims` (-1: any positive extent) as float32. The caller holds lock_hdf5().
torch::Tensor read_half(const H5::H5File& file, const std::string& path, const char* name,
                        const std::vector<int64_t>& expected, const std::string& expected_text) {
  const H5::DataSet dataset = file.openDataSet(name);
  if (!data::is_float16(dataset.getDataType()))
    bad_file(path, std::string("dataset '") + name + "' has dtype " + data::describe_type(dataset.getDataType()) +
                       ", expected float16 (IEEE half, little-endian)");
  const auto dims = data::dataset_shape(dataset);
  bool ok = dims.size() == expected.size();
  for (size_t i = 0; ok && i < dims.size(); ++i)
    ok = expected[i] < 0 ? dims[i] > 0 : static_cast<int64_t>(dims[i]) == expected[i];
  if (!ok)
    bad_file(path, std::string("dataset '") + name + "' has shape " + data::describe_shape(dims) + ", expected " +
                       expected_text);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  auto out = torch::empty(shape, torch::kHalf);
  if (out.numel() > 0) dataset.read(out.data_ptr(), data::float16_type());
  return out.to(torch::kFloat32);
}

torch::Tensor read_mask(const H5::H5File& file, const std::string& path, const char* name,
                        const std::vector<int64_t>& expected, const std::string& expected_text) {
  const H5::DataSet dataset = file.openDataSet(name);
  if (!is_uint8(dataset.getDataType()))
    bad_file(path, std::string("dataset '") + name + "' has dtype " + data::describe_type(dataset.getDataType()) +
                       ", expected uint8 (1 = real token, 0 = padding)");
  const auto dims = data::dataset_shape(dataset);
  if (std::vector<int64_t>(dims.begin(), dims.end()) != expected)
    bad_file(path, std::string("dataset '") + name + "' has shape " + data::describe_shape(dims) + ", expected " +
                       expected_text);
  auto out = torch::empty(expected, torch::kUInt8);
  if (out.numel() > 0) dataset.read(out.data_ptr(), H5::PredType::NATIVE_UINT8);
  return out.to(torch::kBool);
}

std::string optional_string_attribute(const H5::H5File& file, const std::string& path, const char* name) {
  if (!file.attrExists(name)) return "";
  return data::read_string_attribute(file, path, name);
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) throw std::runtime_error("cannot open " + path + " for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error("fsync of " + path + " failed");
}

std::vector<uint16_t> half_bits(const torch::Tensor& values) {
  const auto half = values.to(torch::kHalf).contiguous();
  std::vector<uint16_t> bits(static_cast<size_t>(half.numel()));
  if (!bits.empty()) std::memcpy(bits.data(), half.data_ptr(), bits.size() * sizeof(uint16_t));
  return bits;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + ")";
}

}  // namespace

PromptEmbeddings encode_prompts(const model::FrozenTextEncoder& encoder, const std::vector<std::string>& captions,
                                const std::string& null_kind, int64_t batch_size) {
  if (null_kind != "empty" && null_kind != "zeros")
    throw std::invalid_argument("null condition '" + null_kind + "': expected empty or zeros");
  PromptEmbeddings e;
  e.captions = captions;
  std::vector<torch::Tensor> states, masks, pooled;
  for (size_t start = 0; start < captions.size(); start += static_cast<size_t>(batch_size)) {
    const auto end = std::min(captions.size(), start + static_cast<size_t>(batch_size));
    const auto batch = encoder.encode(std::vector<std::string>(captions.begin() + start, captions.begin() + end));
    states.push_back(round_to_half(batch.states));
    masks.push_back(batch.mask.to(torch::kBool));
    pooled.push_back(round_to_half(batch.pooled));
  }
  const int64_t L = encoder.max_tokens(), D = encoder.width(), P = encoder.pooled_width();
  e.states = states.empty() ? torch::zeros({0, L, D}) : torch::cat(states);
  e.mask = masks.empty() ? torch::zeros({0, L}, torch::kBool) : torch::cat(masks);
  if (P > 0) e.pooled = pooled.empty() ? torch::zeros({0, P}) : torch::cat(pooled);
  const auto& null = encoder.null_condition();
  if (null_kind == "empty") {
    e.null_states = round_to_half(null.states);
    e.null_mask = null.mask.to(torch::kBool);
    if (P > 0) e.null_pooled = round_to_half(null.pooled);
  } else {
    e.null_states = torch::zeros({1, L, D});
    e.null_mask = torch::zeros({1, L}, torch::kBool);
    if (P > 0) e.null_pooled = torch::zeros({1, P});
  }
  e.encoder = encoder.identity();
  e.tokenizer = encoder.tokenizer().describe();
  e.null_kind = null_kind;
  e.source = "prompts encoded by " + encoder.identity();
  return e;
}

PromptEmbeddings read_prompt_embeddings(const std::string& path) {
  if (!fs::exists(path)) bad_file(path, "does not exist");
  if (fs::is_directory(path)) bad_file(path, "is a directory, expected an HDF5 file");
  PromptEmbeddings e;
  e.source = "prompt embeddings file " + path;
  auto lock = data::lock_hdf5();
  try {
    H5::H5File file;
    try {
      file.openFile(path, H5F_ACC_RDONLY);
    } catch (const H5::Exception& err) {
      bad_file(path, "cannot open as HDF5: " + (data::last_hdf5_error().empty() ? err.getDetailMsg()
                                                                                 : data::last_hdf5_error()));
    }
    for (const char* name : {"captions", "text_states", "text_mask"})
      if (!data::has_dataset(file, name))
        bad_file(path, std::string("dataset '") + name + "' is missing; a prompt embeddings file holds 'captions', "
                       "'text_states', 'text_mask' (and optionally 'text_pooled', 'text_null_*') in the shard layout "
                       "(docs/SHARD_FORMAT.md), e.g. from `difftrain encode-text --prompts ... --out FILE.h5`");
    const H5::DataSet captions = file.openDataSet("captions");
    const auto caption_dims = data::dataset_shape(captions);
    if (captions.getTypeClass() != H5T_STRING || caption_dims.size() != 1)
      bad_file(path, "dataset 'captions' is " + data::describe_type(captions.getDataType()) + " of shape " +
                         data::describe_shape(caption_dims) + ", expected strings of shape (N,)");
    const int64_t N = static_cast<int64_t>(caption_dims[0]);
    if (N == 0) bad_file(path, "dataset 'captions' holds no prompt");
    e.captions = read_strings(captions, caption_dims[0]);
    const std::string n = std::to_string(N);
    e.states = read_half(file, path, "text_states", {N, -1, -1}, "(N, L, D) = (" + n + ", L, D), one per caption");
    const int64_t L = e.states.size(1), D = e.states.size(2);
    e.mask = read_mask(file, path, "text_mask", {N, L}, "(N, L) = " + dims_text({N, L}) + " as 'text_states'");
    int64_t P = 0;
    if (data::has_dataset(file, "text_pooled")) {
      e.pooled = read_half(file, path, "text_pooled", {N, -1}, "(N, D') = (" + n + ", D')");
      P = e.pooled.size(1);
    }
    const bool null_states = data::has_dataset(file, "text_null_states"),
               null_mask = data::has_dataset(file, "text_null_mask"),
               null_pooled = data::has_dataset(file, "text_null_pooled");
    if (null_states || null_mask || null_pooled) {
      if (!null_states || !null_mask || null_pooled != (P > 0))
        bad_file(path, std::string("the null condition is incomplete: dataset '") +
                           (!null_states ? "text_null_states" : !null_mask ? "text_null_mask" : "text_null_pooled") +
                           "' is " + (null_pooled && P == 0 ? "present without 'text_pooled'" : "missing") +
                           "; it has 'text_null_states', 'text_null_mask' and, exactly when 'text_pooled' exists, "
                           "'text_null_pooled'");
      e.null_states = read_half(file, path, "text_null_states", {1, L, D}, "(1, L, D) = " + dims_text({1, L, D}));
      e.null_mask = read_mask(file, path, "text_null_mask", {1, L}, "(1, L) = " + dims_text({1, L}));
      if (P > 0) e.null_pooled = read_half(file, path, "text_null_pooled", {1, P}, "(1, D') = " + dims_text({1, P}));
    }
    e.encoder = optional_string_attribute(file, path, "text_encoder");
    e.tokenizer = optional_string_attribute(file, path, "text_tokenizer");
    e.null_kind = optional_string_attribute(file, path, kTextNullAttribute);
  } catch (const H5::Exception& err) {
    bad_file(path, "read failed: " + (data::last_hdf5_error().empty() ? err.getDetailMsg() : data::last_hdf5_error()));
  } catch (const data::ShardError& err) {
    throw std::runtime_error(std::string("prompt embeddings ") + err.what());
  }
  return e;
}

void write_prompt_embeddings(const std::string& path, const PromptEmbeddings& e) {
  const int64_t N = e.size(), L = e.states.size(1), D = e.states.size(2), P = e.pooled.defined() ? e.pooled.size(1) : 0;
  if (N < 1) bad_file(path, "no prompt to write");
  const std::string temp = path + ".tmp";
  const auto parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  try {
    auto lock = data::lock_hdf5();
    try {
      H5::H5File file(temp, H5F_ACC_TRUNC);
      H5::StrType caption_type(H5::PredType::C_S1, H5T_VARIABLE);
      caption_type.setCset(H5T_CSET_UTF8);
      const hsize_t n = static_cast<hsize_t>(N);
      std::vector<const char*> ptrs;
      for (const auto& c : e.captions) ptrs.push_back(c.c_str());
      file.createDataSet("captions", caption_type, H5::DataSpace(1, &n)).write(ptrs.data(), caption_type);
      const H5::FloatType half = data::float16_type();
      const auto write_half = [&](const char* name, const torch::Tensor& t) {
        std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
        const auto bits = half_bits(t);
        file.createDataSet(name, half, H5::DataSpace(static_cast<int>(dims.size()), dims.data()))
            .write(bits.data(), half);
      };
      const auto write_mask = [&](const char* name, const torch::Tensor& m) {
        std::vector<hsize_t> dims(m.sizes().begin(), m.sizes().end());
        const auto bytes = m.to(torch::kUInt8).contiguous();
        file.createDataSet(name, H5::PredType::STD_U8LE, H5::DataSpace(static_cast<int>(dims.size()), dims.data()))
            .write(bytes.data_ptr(), H5::PredType::NATIVE_UINT8);
      };
      write_half("text_states", e.states);  // (N, L, D)
      write_mask("text_mask", e.mask);      // (N, L)
      if (P > 0) write_half("text_pooled", e.pooled);  // (N, D')
      if (e.null_states.defined()) {
        write_half("text_null_states", e.null_states.reshape({1, L, D}));
        write_mask("text_null_mask", e.null_mask.reshape({1, L}));
        if (P > 0) write_half("text_null_pooled", e.null_pooled.reshape({1, P}));
      }
      data::write_string_attribute(file, "format", kPromptsFormat);
      data::write_int_attribute(file, "format_version", 1);
      data::write_string_attribute(file, "text_encoder", e.encoder);
      data::write_string_attribute(file, "text_tokenizer", e.tokenizer);
      if (!e.null_kind.empty()) data::write_string_attribute(file, kTextNullAttribute, e.null_kind);
    } catch (const H5::Exception& err) {
      bad_file(temp, "write failed: " + (data::last_hdf5_error().empty() ? err.getDetailMsg() : data::last_hdf5_error()));
    }
    fsync_path(temp, O_RDONLY);
    fs::rename(temp, path);
    fsync_path(parent.empty() ? "." : parent.string(), O_RDONLY | O_DIRECTORY);
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw;
  }
}

PromptEmbeddings shard_set_prompt_embeddings(const std::string& dir, uint64_t seed, int64_t limit) {
  const auto shards = data::open_shard_directory(dir, data::shard_directory_geometry(dir));
  const auto shape = data::text_embedding_shape(shards);
  if (!shape)
    throw std::runtime_error("the shards in " + dir + " carry no text embeddings (text_states/text_mask); add them "
                             "with `difftrain encode-text --encoder ENCODER.pt --data " + dir + "`");
  // The seeded order of the sample indices, as data::seeded_order orders the captions.
  int64_t total = 0;
  for (const auto& s : shards) total += s.count;
  std::vector<std::string> index_names;
  for (int64_t i = 0; i < total; ++i) index_names.push_back(std::to_string(i));
  const auto order = data::seeded_order(std::move(index_names), seed);
  const int64_t count = limit > 0 ? std::min(limit, total) : total;
  const int64_t L = shape->tokens, D = shape->width, P = shape->pooled_width;
  PromptEmbeddings e;
  e.source = "the stored embeddings of " + dir;
  e.states = torch::empty({count, L, D});
  e.mask = torch::empty({count, L}, torch::kBool);
  if (P > 0) e.pooled = torch::empty({count, P});
  std::vector<std::unique_ptr<data::ShardReader>> readers;
  std::vector<int64_t> first;  // global index of each shard's sample 0
  for (const auto& s : shards) {
    first.push_back(readers.empty() ? 0 : first.back() + readers.back()->size());
    readers.push_back(std::make_unique<data::ShardReader>(s));
  }
  std::vector<uint16_t> states(static_cast<size_t>(L * D)), pooled(static_cast<size_t>(P));
  std::vector<uint8_t> mask(static_cast<size_t>(L));
  const auto to_float = [](std::vector<uint16_t>& bits, std::vector<int64_t> shape) {
    return torch::from_blob(bits.data(), shape, torch::kHalf).to(torch::kFloat32);
  };
  for (int64_t k = 0; k < count; ++k) {
    const int64_t global = std::stoll(order[static_cast<size_t>(k)]);
    const size_t s = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), global) - first.begin() - 1);
    std::string caption;
    readers[s]->read(global - first[s], nullptr, &caption);
    readers[s]->read_text(global - first[s], states.data(), mask.data(), P > 0 ? pooled.data() : nullptr);
    e.captions.push_back(std::move(caption));
    e.states[k].copy_(to_float(states, {L, D}));
    e.mask[k].copy_(torch::from_blob(mask.data(), {L}, torch::kUInt8).to(torch::kBool));
    if (P > 0) e.pooled[k].copy_(to_float(pooled, {P}));
  }
  if (shape->has_null) {
    readers.front()->read_text_null(states.data(), mask.data(), P > 0 ? pooled.data() : nullptr);
    e.null_states = to_float(states, {1, L, D});
    e.null_mask = torch::from_blob(mask.data(), {1, L}, torch::kUInt8).to(torch::kBool);
    if (P > 0) e.null_pooled = to_float(pooled, {1, P});
  }
  e.encoder = shards.front().text_encoder;
  e.tokenizer = shards.front().text_tokenizer;
  e.null_kind = data::read_shard_attribute(shards.front().path, kTextNullAttribute).value_or("");
  return e;
}

std::string sha256_in_identity(const std::string& identity) {
  const auto at = identity.find("sha256:");
  if (at == std::string::npos) return "";
  const auto end = identity.find(' ', at);
  return identity.substr(at + 7, end == std::string::npos ? std::string::npos : end - at - 7);
}

void check_encoder_for_model(const model::FrozenTextEncoder& encoder, const std::string& path,
                             const TextConditioning& model) {
  if (model.encoder.empty()) {
    spdlog::warn("{} does not record the text encoder it was trained with (model.text_encoder is empty: a "
                 "checkpoint from before the key); using {} unchecked",
                 model.origin, encoder.identity());
  } else {
    const std::string expected = sha256_in_identity(model.encoder);
    if (expected != encoder.sha256())
      throw std::runtime_error("text encoder " + path + " (" + encoder.identity() + ") is not the one " + model.origin +
                               " was trained with (model.text_encoder = \"" + model.encoder +
                               "\"): embeddings of another encoder mean nothing to this model");
  }
  if (encoder.max_tokens() != model.tokens || encoder.width() != model.width ||
      encoder.pooled_width() != model.pooled_width)
    throw std::runtime_error("text encoder " + path + " gives L=" + std::to_string(encoder.max_tokens()) + " D=" +
                             std::to_string(encoder.width()) + " D'=" + std::to_string(encoder.pooled_width()) +
                             ", but " + model.origin + " takes model.max_tokens=" + std::to_string(model.tokens) +
                             " model.context_dim=" + std::to_string(model.width) +
                             " model.pooled_dim=" + std::to_string(model.pooled_width));
}

void resolve_for_model(PromptEmbeddings& e, const TextConditioning& model) {
  const auto fail = [&](const std::string& what) { throw std::runtime_error(e.source + ": " + what); };
  const int64_t L = e.states.size(1), D = e.states.size(2), P = e.pooled.defined() ? e.pooled.size(1) : 0;
  const std::string takes = model.origin + " takes (L, D) = (model.max_tokens, model.context_dim) = (" +
                            std::to_string(model.tokens) + ", " + std::to_string(model.width) + ")";
  if (L != model.tokens || D != model.width)
    fail("dataset 'text_states' has shape " + shape_text(e.states) + ", but " + takes);
  if (P != model.pooled_width)
    fail(P == 0 ? "has no dataset 'text_pooled', but " + model.origin + " takes a pooled vector of model.pooled_dim=" +
                      std::to_string(model.pooled_width)
                : "dataset 'text_pooled' has shape " + shape_text(e.pooled) + ", but " + model.origin +
                      " takes model.pooled_dim=" + std::to_string(model.pooled_width) +
                      (model.pooled_width == 0 ? " (no pooled vector)" : ""));
  if (!model.encoder.empty()) {
    const std::string want = sha256_in_identity(model.encoder), have = sha256_in_identity(e.encoder);
    const bool same = !want.empty() && !have.empty() ? want == have : model.encoder == e.encoder;
    if (!same)
      fail("its text_encoder attribute \"" + e.encoder + "\" is not the encoder " + model.origin +
           " was trained with (model.text_encoder = \"" + model.encoder + "\")");
  }
  if (!e.null_kind.empty() && !model.null_kind.empty() && e.null_kind != model.null_kind && e.null_states.defined())
    fail("its null condition is text_null = " + e.null_kind + ", but " + model.origin +
         " was trained with model.text_null = " + model.null_kind);
  if (!e.null_states.defined()) {
    if (model.null_kind != "zeros")
      fail("has no null condition (datasets 'text_null_states', 'text_null_mask'" +
           std::string(P > 0 ? ", 'text_null_pooled'" : "") + "), which classifier-free guidance needs, and " +
           model.origin + " has model.text_null = " + (model.null_kind.empty() ? "(unset)" : model.null_kind) +
           ", not zeros; write the file with `difftrain encode-text --prompts ... --out FILE.h5`, which stores it");
    e.null_states = torch::zeros({1, L, D});
    e.null_mask = torch::zeros({1, L}, torch::kBool);
    if (P > 0) e.null_pooled = torch::zeros({1, P});
    e.null_kind = "zeros";
  }
}

torch::Tensor pack_conditions(const torch::Tensor& states, const torch::Tensor& mask, const torch::Tensor& pooled) {
  const int64_t B = states.size(0);
  std::vector<torch::Tensor> parts = {states.reshape({B, -1}).to(torch::kFloat32), mask.reshape({B, -1}).to(torch::kFloat32)};
  if (pooled.defined()) parts.push_back(pooled.reshape({B, -1}).to(torch::kFloat32));
  return torch::cat(parts, 1);
}

model::Conditioning unpack_conditions(const torch::Tensor& rows, int64_t L, int64_t D, int64_t P) {
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == L * D + L + P, "packed conditions: expected (B, ", L * D + L + P,
              "), got ", rows.sizes());
  const int64_t B = rows.size(0);
  model::Conditioning c;
  c.context = rows.slice(1, 0, L * D).reshape({B, L, D});
  c.mask = rows.slice(1, L * D, L * D + L).gt(0.5);
  if (P > 0) c.pooled = rows.slice(1, L * D + L, L * D + L + P);
  return c;
}

torch::Tensor packed_rows(const PromptEmbeddings& e, const std::vector<int64_t>& indices) {
  const auto index = torch::tensor(indices, torch::kInt64);
  return pack_conditions(e.states.index_select(0, index), e.mask.index_select(0, index),
                         e.pooled.defined() ? e.pooled.index_select(0, index) : torch::Tensor());
}

torch::Tensor packed_null(const PromptEmbeddings& e) {
  TORCH_CHECK(e.null_states.defined(), e.source, ": no null condition (resolve_for_model settles it)");
  return pack_conditions(e.null_states, e.null_mask, e.null_pooled);
}

std::string digest_of(const PromptEmbeddings& e) {
  Sha256 h;
  for (const auto& c : e.captions) h.text(c);
  h.tensor(e.states).tensor(e.mask);
  if (e.pooled.defined()) h.tensor(e.pooled);
  if (e.null_states.defined()) h.tensor(e.null_states).tensor(e.null_mask);
  if (e.null_pooled.defined()) h.tensor(e.null_pooled);
  return h.hex();
}

}  // namespace difftrain::eval
