// A checkpoint's manifest.json: what the directory must hold, byte for byte.
// Written last, just before the directory gets its final name, so a checkpoint
// without one is unverifiable and treated as damaged (docs/CHECKPOINTS.md):
//
//   {"format": "difftrain-checkpoint", "format_version": 1, "step": 1000,
//    "files": [{"name": "model.pt", "size": 394214, "sha256": "9f2c..."}, ...]}
//
// Also the checked POSIX file I/O the checkpoint code uses: every write is
// checked (a full disk is an error naming the file, never an abort) and fsynced.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain {

constexpr const char* kManifestFile = "manifest.json";
constexpr int64_t kManifestFormatVersion = 1;

struct ManifestFile {
  std::string name;    // relative to the checkpoint directory
  int64_t size = 0;    // bytes
  std::string sha256;  // lowercase hex, 64 characters
};

struct CheckpointManifest {
  int64_t step = 0;
  std::vector<ManifestFile> files;
};

// SHA-256 (OpenSSL EVP) of `size` bytes, as lowercase hex.
std::string sha256_hex(const void* data, size_t size);

std::string manifest_to_json(const CheckpointManifest& manifest);
// Throws std::runtime_error saying what is malformed (the caller names the file).
CheckpointManifest parse_manifest(const std::string& text);

// write + fsync, every call checked. Throws std::runtime_error
// "cannot write '<path>': <strerror>" (e.g. "No space left on device").
void write_file_synced(const std::string& path, const std::string& bytes);
// fsync of a directory, so a rename in it is durable.
void fsync_directory(const std::string& path);
// Reads the whole file into `bytes`; false when it does not exist. Throws
// std::runtime_error naming the path on any other error.
bool read_file_bytes(const std::string& path, std::string& bytes);

}  // namespace difftrain
