// Test helper for check_shard_h5py.py, which drives the C++ shard code from
// Python to cross-check it against h5py. Not a user tool (that is cli/).
//   shard_tool_for_tests write <path>              a known 70-sample (6, 5, 3) shard
//   shard_tool_for_tests read <path> <H> <W>       validate, then one line per sample:
//                                                  "<index>\t<image bytes as hex>\t<caption>"
//   shard_tool_for_tests read-text <path> <H> <W>  validate, then "L D D'" (+ " null" and a line
//                                                  "null\t..." with the null condition) and one line per sample:
//                                                  "<index>\t<states hex>\t<mask hex>\t<pooled hex>"
//                                                  (float16 as little-endian bytes)
// A ShardError goes to stderr with exit status 2.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "data/shard_reader.h"
#include "data/shard_writer.h"

using namespace difftrain::data;

namespace {

// Must match expected_written() in check_shard_h5py.py.
constexpr int64_t kWrittenCount = 70;
const ImageGeometry kWrittenGeometry{6, 5, 3};

int write(const std::string& path) {
  ShardWriter writer(path, kWrittenGeometry);
  std::vector<uint8_t> image(static_cast<size_t>(kWrittenGeometry.bytes()));  // (H, W, C)
  for (int64_t i = 0; i < kWrittenCount; ++i) {
    for (size_t j = 0; j < image.size(); ++j) image[j] = static_cast<uint8_t>((i * 13 + j) % 256);
    writer.add(image.data(), "caption " + std::to_string(i) + " ünïcødé ✓");
  }
  writer.close();
  return 0;
}

int read(const std::string& path, int64_t height, int64_t width) {
  ShardReader reader(validate_shard(path, ImageGeometry{height, width, 3}));
  std::vector<uint8_t> image(static_cast<size_t>(height * width * 3));  // (H, W, C)
  std::string caption;
  for (int64_t i = 0; i < reader.size(); ++i) {
    reader.read(i, image.data(), &caption);
    std::cout << i << '\t';
    for (uint8_t byte : image) {
      char hex[3];
      std::snprintf(hex, sizeof(hex), "%02x", byte);
      std::cout << hex;
    }
    std::cout << '\t' << caption << '\n';
  }
  return 0;
}

std::string hex_of(const void* data, size_t bytes) {
  std::string out;
  for (size_t i = 0; i < bytes; ++i) {
    char hex[3];
    std::snprintf(hex, sizeof(hex), "%02x", static_cast<const uint8_t*>(data)[i]);
    out += hex;
  }
  return out;
}

int read_text(const std::string& path, int64_t height, int64_t width) {
  const ShardInfo info = validate_shard(path, ImageGeometry{height, width, 3});
  if (!info.text) throw ShardError("shard " + path + ": no text embeddings");
  const TextEmbeddingShape& shape = *info.text;
  ShardReader reader(info);
  std::vector<uint16_t> states(static_cast<size_t>(shape.state_values())), pooled(static_cast<size_t>(shape.pooled_width));
  std::vector<uint8_t> mask(static_cast<size_t>(shape.tokens));
  std::cout << shape.tokens << ' ' << shape.width << ' ' << shape.pooled_width << (shape.has_null ? " null" : "") << '\n';
  if (shape.has_null) {
    reader.read_text_null(states.data(), mask.data(), pooled.data());
    std::cout << "null\t" << hex_of(states.data(), states.size() * 2) << '\t' << hex_of(mask.data(), mask.size())
              << '\t' << hex_of(pooled.data(), pooled.size() * 2) << '\n';
  }
  for (int64_t i = 0; i < reader.size(); ++i) {
    reader.read_text(i, states.data(), mask.data(), pooled.data());
    std::cout << i << '\t' << hex_of(states.data(), states.size() * 2) << '\t' << hex_of(mask.data(), mask.size())
              << '\t' << hex_of(pooled.data(), pooled.size() * 2) << '\n';
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 2 && args[0] == "write") return write(args[1]);
    if (args.size() == 4 && args[0] == "read-text") return read_text(args[1], std::stoll(args[2]), std::stoll(args[3]));
    if (args.size() == 4 && args[0] == "read") {
      return read(args[1], std::stoll(args[2]), std::stoll(args[3]));
    }
  } catch (const ShardError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  }
  std::cerr << "usage: shard_tool_for_tests write <path> | read <path> <H> <W>\n";
  return 1;
}
