#include "eval/manifest.h"

#include "eval/atomic_write.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

namespace difftrain::eval {
namespace {

using nlohmann::json;

// Returns the value of `key`, or throws naming it when it is absent or of the wrong type.
const json& field(const json& object, const char* key, bool (json::*has_type)() const noexcept,
                  const char* type_name) {
  const auto it = object.find(key);
  if (it == object.end()) throw std::runtime_error(std::string("missing key \"") + key + "\"");
  if (!((*it).*has_type)()) {
    throw std::runtime_error(std::string("key \"") + key + "\" must be " + type_name + ", got " +
                             it->dump());
  }
  return *it;
}

ManifestEntry parse_entry(const std::string& line) {
  const json object = json::parse(line);
  if (!object.is_object()) throw std::runtime_error("expected a JSON object");
  ManifestEntry e;
  e.file = field(object, "file", &json::is_string, "a string").get<std::string>();
  e.prompt = field(object, "prompt", &json::is_string, "a string").get<std::string>();
  e.seed = field(object, "seed", &json::is_number_unsigned, "a non-negative integer").get<uint64_t>();
  e.sampler = field(object, "sampler", &json::is_string, "a string").get<std::string>();
  e.steps = field(object, "steps", &json::is_number_integer, "an integer").get<int64_t>();
  e.guidance = field(object, "guidance", &json::is_number, "a number").get<double>();
  return e;
}

}  // namespace

void write_manifest(const std::string& path, const std::vector<ManifestEntry>& entries) {
  std::string text;
  for (const ManifestEntry& e : entries) {
    // ordered_json keeps the documented key order, so manifests diff cleanly.
    const nlohmann::ordered_json object = {{"file", e.file},       {"prompt", e.prompt},
                                           {"seed", e.seed},       {"sampler", e.sampler},
                                           {"steps", e.steps},     {"guidance", e.guidance}};
    text += object.dump() + "\n";
  }
  write_file_atomically(path, text.data(), text.size());
}

std::vector<ManifestEntry> read_manifest(const std::string& path) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("manifest " + path + " does not exist");
  if (std::filesystem::is_directory(path))
    throw std::runtime_error("manifest " + path + " is a directory, expected the manifest.jsonl that `sample` writes");
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open manifest " + path);
  std::vector<ManifestEntry> entries;
  std::string line;
  for (int64_t number = 1; std::getline(file, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      entries.push_back(parse_entry(line));
    } catch (const std::exception& e) {
      throw std::runtime_error("manifest " + path + " line " + std::to_string(number) + ": " + e.what());
    }
  }
  if (file.bad()) throw std::runtime_error("manifest " + path + ": read error");
  return entries;
}

std::string guidance_values(const std::vector<ManifestEntry>& entries) {
  std::set<double> scales;
  for (const ManifestEntry& e : entries) scales.insert(e.guidance);
  std::string out;
  char buf[32];
  for (double w : scales) {
    std::snprintf(buf, sizeof(buf), "%g", w);
    out += (out.empty() ? "" : ", ") + std::string(buf);
  }
  return out;
}

}  // namespace difftrain::eval
