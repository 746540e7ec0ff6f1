// The thin layer between difftrain::data and the HDF5 C++ API: the process-wide
// HDF5 lock, conversion of H5::Exception into ShardError, and typed attribute
// helpers. Internal to data/ (and its tests); the public headers do not
// include H5Cpp.h.
//
// Threading: HDF5 cannot be used from several threads at once. Builds
// without --enable-threadsafe have no locking at all, and even the
// thread-safe build (Debian's libhdf5 1.10 is one) covers only the C library,
// not the C++ wrappers we use (H5:: objects close their ids in destructors).
// Every HDF5 call in data/ is therefore made while holding lock_hdf5(), so
// several loaders, a shard writer and validation can run on different
// threads safely. Code outside data/ must not call HDF5 directly (or must
// take the same lock).
#pragma once

#include <H5Cpp.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "data/shard_format.h"

namespace difftrain::data {

// Recursive so that a locked helper may call another locked helper. Also
// silences HDF5's own stderr printing (once) and clears the last recorded
// HDF5 error, so hdf5_error_detail() describes only failures after this point.
std::unique_lock<std::recursive_mutex> lock_hdf5();

// The most specific message of the last failed HDF5 call on this thread (for
// a truncated file: "truncated file: eof = ..."), or "" when none was recorded.
std::string last_hdf5_error();

// ShardError "shard <path>: <what>: <HDF5's own words>".
ShardError shard_error_from(const std::string& path, const std::string& what,
                            const H5::Exception& e);

// "uint8", "float32", "int64", "string", "compound", ...: numpy's names, since
// that is how people who write shards think of dtypes.
std::string describe_type(const H5::DataType& type);

// "(10, 32, 32, 3)".
std::string describe_shape(const std::vector<hsize_t>& dims);
std::vector<hsize_t> dataset_shape(const H5::DataSet& dataset);

bool has_dataset(const H5::H5File& file, const std::string& name);

// Scalar (or one-element) root attributes. read_* throw ShardError naming the
// file and attribute when it is missing or has the wrong kind of type.
std::string read_string_attribute(const H5::H5File& file, const std::string& path,
                                  const std::string& name);
int64_t read_int_attribute(const H5::H5File& file, const std::string& path,
                           const std::string& name);
// A float (or integer) scalar attribute as a double: what h5py writes for a Python float.
double read_double_attribute(const H5::H5File& file, const std::string& path, const std::string& name);
// Variable-length UTF-8, which is what h5py writes for a Python str.
void write_string_attribute(H5::H5File& file, const std::string& name, const std::string& value);
void write_int_attribute(H5::H5File& file, const std::string& name, int64_t value);
void write_double_attribute(H5::H5File& file, const std::string& name, double value);

// The two 16-bit float layouts of the format: IEEE 754 half (numpy's float16, what
// h5py writes) and bfloat16 (float32's upper half: sign 15, exponent 7..14, bias 127).
H5::FloatType float16_type();
H5::FloatType bfloat16_type();
bool is_float16(const H5::DataType& type);
bool is_bfloat16(const H5::DataType& type);

}  // namespace difftrain::data
