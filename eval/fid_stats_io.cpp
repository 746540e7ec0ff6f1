#include "eval/fid_stats_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <vector>

#include "data/hdf5_util.h"

namespace difftrain::eval {
namespace fs = std::filesystem;
namespace {

constexpr const char* kMeanDataset = "mean";
constexpr const char* kCovarianceDataset = "covariance";
constexpr const char* kFormatAttribute = "format";
constexpr const char* kFormatVersionAttribute = "format_version";
constexpr const char* kCountAttribute = "count";
constexpr const char* kSourceAttribute = "source";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("FID stats " + path + ": " + what);
}

// The caller holds lock_hdf5().
[[noreturn]] void fail_hdf5(const std::string& path, const std::string& what, const H5::Exception& e) {
  const std::string detail = data::last_hdf5_error().empty() ? e.getDetailMsg() : data::last_hdf5_error();
  H5Eclear2(H5E_DEFAULT);  // see data::shard_error_from
  fail(path, what + ": " + detail);
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) fail(path, "cannot open for fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail(path, "fsync failed");
}

H5::Attribute scalar_attribute(const H5::H5File& file, const std::string& path, const char* name,
                               H5T_class_t type_class, const char* expected) {
  if (!file.attrExists(name)) fail(path, std::string("root attribute '") + name + "' is missing");
  H5::Attribute attribute = file.openAttribute(name);
  if (attribute.getSpace().getSimpleExtentNpoints() != 1 || attribute.getTypeClass() != type_class) {
    fail(path, std::string("root attribute '") + name + "' is a " + data::describe_type(attribute.getDataType()) +
                   " of " + std::to_string(attribute.getSpace().getSimpleExtentNpoints()) +
                   " elements, expected one " + expected);
  }
  return attribute;
}

std::string string_attribute(const H5::H5File& file, const std::string& path, const char* name) {
  H5::Attribute attribute = scalar_attribute(file, path, name, H5T_STRING, "string");
  std::string value;
  attribute.read(attribute.getStrType(), value);
  while (!value.empty() && value.back() == '\0') value.pop_back();  // numpy's fixed-length strings
  return value;
}

int64_t int_attribute(const H5::H5File& file, const std::string& path, const char* name) {
  int64_t value = 0;
  scalar_attribute(file, path, name, H5T_INTEGER, "int64").read(H5::PredType::NATIVE_INT64, &value);
  return value;
}

// Returns the dataset's values as float64 of shape `expected` (-1: any extent).
torch::Tensor read_float64(const H5::H5File& file, const std::string& path, const char* name,
                           const std::vector<int64_t>& expected, const char* expected_text) {
  if (!data::has_dataset(file, name)) fail(path, std::string("dataset '") + name + "' is missing");
  const H5::DataSet dataset = file.openDataSet(name);
  if (dataset.getTypeClass() != H5T_FLOAT) {
    fail(path, std::string("dataset '") + name + "' has dtype " + data::describe_type(dataset.getDataType()) +
                   ", expected float64");
  }
  const std::vector<hsize_t> dims = data::dataset_shape(dataset);
  bool ok = dims.size() == expected.size();
  for (size_t i = 0; ok && i < dims.size(); ++i) {
    ok = dims[i] > 0 && (expected[i] < 0 || static_cast<int64_t>(dims[i]) == expected[i]);
  }
  if (!ok) {
    fail(path, std::string("dataset '") + name + "' has shape " + data::describe_shape(dims) + ", expected " +
                   expected_text);
  }
  std::vector<int64_t> sizes(dims.begin(), dims.end());
  torch::Tensor values = torch::empty(sizes, torch::kFloat64);
  dataset.read(values.data_ptr<double>(), H5::PredType::NATIVE_DOUBLE);
  return values;
}

void write_float64(H5::H5File& file, const char* name, const torch::Tensor& values) {
  const torch::Tensor v = values.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<hsize_t> dims(v.sizes().begin(), v.sizes().end());
  H5::DataSet dataset = file.createDataSet(name, H5::PredType::IEEE_F64LE,
                                           H5::DataSpace(static_cast<int>(dims.size()), dims.data()));
  dataset.write(v.data_ptr<double>(), H5::PredType::NATIVE_DOUBLE);
}

}  // namespace

void save_gaussian_stats(const std::string& path, const GaussianStats& stats) {
  const auto& m = stats.mean;
  const auto& c = stats.covariance;
  if (!m.defined() || !c.defined() || m.dim() != 1 || c.dim() != 2 || c.size(0) != m.size(0) ||
      c.size(1) != m.size(0)) {
    throw std::invalid_argument("save_gaussian_stats " + path + ": mean and covariance must be (D) and (D, D)");
  }
  const std::string temp = path + ".tmp";
  try {
    {
      auto lock = data::lock_hdf5();
      try {
        H5::H5File file(temp, H5F_ACC_TRUNC);
        write_float64(file, kMeanDataset, m);
        write_float64(file, kCovarianceDataset, c);
        data::write_string_attribute(file, kFormatAttribute, kFidStatsFormatName);
        data::write_int_attribute(file, kFormatVersionAttribute, kFidStatsFormatVersion);
        data::write_int_attribute(file, kCountAttribute, stats.count);
        data::write_string_attribute(file, kSourceAttribute, stats.source);
      } catch (const H5::Exception& e) {
        fail_hdf5(temp, "cannot be written", e);
      }
    }
    fsync_path(temp, O_RDONLY);
    fs::rename(temp, path);
  } catch (const fs::filesystem_error& e) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    fail(path, e.what());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw;
  }
  const fs::path parent = fs::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), O_RDONLY | O_DIRECTORY);
}

GaussianStats load_gaussian_stats(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "file does not exist");
  if (!fs::is_regular_file(path, ec)) fail(path, "is not a regular file");
  auto lock = data::lock_hdf5();
  try {
    if (!H5::H5File::isHdf5(path)) fail(path, "is not an HDF5 file");
    const H5::H5File file(path, H5F_ACC_RDONLY);
    const std::string format = string_attribute(file, path, kFormatAttribute);
    if (format != kFidStatsFormatName) {
      fail(path, "root attribute 'format' is \"" + format + "\", expected \"" + kFidStatsFormatName + "\"");
    }
    const int64_t version = int_attribute(file, path, kFormatVersionAttribute);
    if (version != kFidStatsFormatVersion) {
      fail(path, "root attribute 'format_version' is " + std::to_string(version) + ", expected " +
                     std::to_string(kFidStatsFormatVersion));
    }
    GaussianStats g;
    g.mean = read_float64(file, path, kMeanDataset, {-1}, "(D,)");
    const int64_t d = g.mean.size(0);
    g.covariance = read_float64(file, path, kCovarianceDataset, {d, d},
                                ("(D, D) = (" + std::to_string(d) + ", " + std::to_string(d) + ")").c_str());
    g.count = int_attribute(file, path, kCountAttribute);
    g.source = string_attribute(file, path, kSourceAttribute);
    return g;
  } catch (const H5::Exception& e) {
    fail_hdf5(path, "cannot be read (truncated or corrupt?)", e);
  }
}

bool is_gaussian_stats_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  auto lock = data::lock_hdf5();
  try {
    if (!H5::H5File::isHdf5(path)) return false;
    const H5::H5File file(path, H5F_ACC_RDONLY);
    if (!file.attrExists(kFormatAttribute)) return false;
    const H5::Attribute attribute = file.openAttribute(kFormatAttribute);
    if (attribute.getTypeClass() != H5T_STRING) return false;
    std::string value;
    attribute.read(attribute.getStrType(), value);
    while (!value.empty() && value.back() == '\0') value.pop_back();
    return value == kFidStatsFormatName;
  } catch (const H5::Exception&) {
    H5Eclear2(H5E_DEFAULT);
    return false;
  }
}

}  // namespace difftrain::eval
