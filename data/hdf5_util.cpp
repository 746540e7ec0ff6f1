#include "data/hdf5_util.h"

namespace difftrain::data {
namespace {

std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

thread_local std::string t_last_error;

herr_t keep_innermost(unsigned n, const H5E_error2_t* error, void* out) {
  if (n == 0 && error->desc != nullptr) *static_cast<std::string*>(out) = error->desc;
  return 0;
}

// Installed as HDF5's "automatic" error handler: instead of printing the stack
// to stderr it keeps the innermost message, which is the one that says what
// is actually wrong (the H5::Exception only says which API call failed).
herr_t record_error(hid_t stack, void*) {
  std::string innermost;
  H5Ewalk2(stack, H5E_WALK_UPWARD, keep_innermost, &innermost);
  t_last_error = innermost;
  return 0;
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

H5::Attribute open_scalar_attribute(const H5::H5File& file, const std::string& path,
                                    const std::string& name) {
  if (!file.attrExists(name)) {
    throw ShardError("shard " + path + ": root attribute " + quoted(name) +
                     " is missing (a difftrain shard has format, format_version, height, width "
                     "and channels)");
  }
  H5::Attribute attribute = file.openAttribute(name);
  const hssize_t points = attribute.getSpace().getSimpleExtentNpoints();
  if (points != 1) {
    throw ShardError("shard " + path + ": root attribute " + quoted(name) + " has " +
                     std::to_string(points) + " elements, expected a single value");
  }
  return attribute;
}

}  // namespace

std::unique_lock<std::recursive_mutex> lock_hdf5() {
  std::unique_lock<std::recursive_mutex> lock(hdf5_mutex());
  // Per thread, because a thread-safe HDF5 build keeps one error stack (and
  // one automatic handler) per thread; other builds just set it again.
  thread_local bool configured = false;
  if (!configured) {
    H5::Exception::dontPrint();
    H5Eset_auto2(H5E_DEFAULT, record_error, nullptr);
    configured = true;
  }
  t_last_error.clear();
  return lock;
}

std::string last_hdf5_error() { return t_last_error; }

ShardError shard_error_from(const std::string& path, const std::string& what,
                            const H5::Exception& e) {
  const std::string detail = t_last_error.empty() ? e.getDetailMsg() : t_last_error;
  // The thread-safe HDF5 build keeps a per-thread error stack whose records
  // hold references into the library; left on a thread that then exits (the
  // loader's reader), they make HDF5's shutdown loop ("infinite loop closing
  // library"). The message is taken, so drop the records now.
  H5Eclear2(H5E_DEFAULT);
  return ShardError("shard " + path + ": " + what + ": " + detail);
}

std::string describe_type(const H5::DataType& type) {
  const std::string bits = std::to_string(type.getSize() * 8);
  switch (type.getClass()) {
    case H5T_INTEGER:
      return (H5Tget_sign(type.getId()) == H5T_SGN_NONE ? "uint" : "int") + bits;
    case H5T_FLOAT:
      return "float" + bits;
    case H5T_STRING:
      return type.isVariableStr()
                 ? "variable-length string"
                 : "fixed-length string of " + std::to_string(type.getSize()) + " bytes";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";  // h5py stores numpy bool as an enum
    case H5T_VLEN:
      return "variable-length sequence";
    case H5T_ARRAY:
      return "array";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "unknown type";
  }
}

std::string describe_shape(const std::vector<hsize_t>& dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  if (dims.size() == 1) out += ",";  // numpy's spelling of a 1-tuple
  return out + ")";
}

std::vector<hsize_t> dataset_shape(const H5::DataSet& dataset) {
  const H5::DataSpace space = dataset.getSpace();
  std::vector<hsize_t> dims(static_cast<size_t>(space.getSimpleExtentNdims()));
  if (!dims.empty()) space.getSimpleExtentDims(dims.data());
  return dims;
}

bool has_dataset(const H5::H5File& file, const std::string& name) {
  const htri_t exists = H5Lexists(file.getId(), name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw H5::FileIException("H5Lexists", "cannot look up '" + name + "'");
  return exists > 0 && file.childObjType(name) == H5O_TYPE_DATASET;
}

std::string read_string_attribute(const H5::H5File& file, const std::string& path,
                                  const std::string& name) {
  H5::Attribute attribute = open_scalar_attribute(file, path, name);
  if (attribute.getTypeClass() != H5T_STRING) {
    throw ShardError("shard " + path + ": root attribute " + quoted(name) + " has dtype " +
                     describe_type(attribute.getDataType()) + ", expected string");
  }
  // Reading with the attribute's own string type works for both variable- and
  // fixed-length strings, and HDF5 does not convert between ASCII and UTF-8.
  std::string value;
  attribute.read(attribute.getStrType(), value);
  // Fixed-length strings written by numpy are NUL-padded.
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

int64_t read_int_attribute(const H5::H5File& file, const std::string& path,
                           const std::string& name) {
  H5::Attribute attribute = open_scalar_attribute(file, path, name);
  if (attribute.getTypeClass() != H5T_INTEGER) {
    throw ShardError("shard " + path + ": root attribute " + quoted(name) + " has dtype " +
                     describe_type(attribute.getDataType()) + ", expected int64");
  }
  int64_t value = 0;
  attribute.read(H5::PredType::NATIVE_INT64, &value);
  return value;
}

double read_double_attribute(const H5::H5File& file, const std::string& path, const std::string& name) {
  H5::Attribute attribute = open_scalar_attribute(file, path, name);
  if (attribute.getTypeClass() != H5T_FLOAT && attribute.getTypeClass() != H5T_INTEGER) {
    throw ShardError("shard " + path + ": root attribute " + quoted(name) + " has dtype " +
                     describe_type(attribute.getDataType()) + ", expected a number (float64)");
  }
  double value = 0;
  attribute.read(H5::PredType::NATIVE_DOUBLE, &value);
  return value;
}

void write_string_attribute(H5::H5File& file, const std::string& name, const std::string& value) {
  H5::StrType type(H5::PredType::C_S1, H5T_VARIABLE);
  type.setCset(H5T_CSET_UTF8);
  H5::Attribute attribute = file.createAttribute(name, type, H5::DataSpace(H5S_SCALAR));
  attribute.write(type, value);
}

void write_int_attribute(H5::H5File& file, const std::string& name, int64_t value) {
  H5::Attribute attribute =
      file.createAttribute(name, H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR));
  attribute.write(H5::PredType::NATIVE_INT64, &value);
}

void write_double_attribute(H5::H5File& file, const std::string& name, double value) {
  H5::Attribute attribute = file.createAttribute(name, H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR));
  attribute.write(H5::PredType::NATIVE_DOUBLE, &value);
}

namespace {
bool has_float_layout(const H5::DataType& type, size_t exponent_pos, size_t exponent_size, size_t mantissa_size,
                      size_t bias) {
  if (type.getClass() != H5T_FLOAT || type.getSize() != 2) return false;
  size_t sign = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type.getId(), &sign, &epos, &esize, &mpos, &msize) < 0) return false;
  return sign == 15 && epos == exponent_pos && esize == exponent_size && mpos == 0 && msize == mantissa_size &&
         H5Tget_ebias(type.getId()) == bias && H5Tget_order(type.getId()) == H5T_ORDER_LE;
}
}  // namespace

// IEEE half, little-endian, built the way h5py builds numpy's float16.
H5::FloatType float16_type() {
  H5::FloatType type(H5::PredType::IEEE_F32LE);
  type.setFields(15, 10, 5, 0, 10);
  type.setSize(2);
  type.setEbias(15);
  return type;
}

H5::FloatType bfloat16_type() {
  H5::FloatType type(H5::PredType::IEEE_F32LE);
  type.setFields(15, 7, 8, 0, 7);
  type.setSize(2);
  type.setEbias(127);
  return type;
}

bool is_float16(const H5::DataType& type) { return has_float_layout(type, 10, 5, 10, 15); }
bool is_bfloat16(const H5::DataType& type) { return has_float_layout(type, 7, 8, 7, 127); }

}  // namespace difftrain::data
