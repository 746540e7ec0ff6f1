#include "trainer/checkpoint_manifest.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace difftrain {
namespace {

[[noreturn]] void io_error(const std::string& verb, const std::string& path, int error) {
  throw std::runtime_error("cannot " + verb + " '" + path + "': " + std::strerror(error));
}

bool is_lower_hex(const std::string& s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data, size) != 1 || EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1)
    throw std::runtime_error("OpenSSL could not compute a SHA-256 digest");
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

std::string manifest_to_json(const CheckpointManifest& m) {
  nlohmann::ordered_json files = nlohmann::ordered_json::array();
  for (const auto& f : m.files) files.push_back({{"name", f.name}, {"size", f.size}, {"sha256", f.sha256}});
  const nlohmann::ordered_json j = {{"format", "difftrain-checkpoint"},
                                    {"format_version", kManifestFormatVersion},
                                    {"step", m.step},
                                    {"files", files}};
  return j.dump(2) + "\n";
}

CheckpointManifest parse_manifest(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("not JSON: ") + e.what());
  }
  if (!j.is_object()) throw std::runtime_error("not a JSON object");
  if (j.value("format", "") != "difftrain-checkpoint") throw std::runtime_error("key 'format' is not \"difftrain-checkpoint\"");
  const auto version = j.find("format_version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != kManifestFormatVersion)
    throw std::runtime_error("key 'format_version' = " + (version == j.end() ? std::string("(missing)") : version->dump()) +
                             ": this build reads version " + std::to_string(kManifestFormatVersion));
  const auto step = j.find("step");
  if (step == j.end() || !step->is_number_integer() || step->get<int64_t>() < 0)
    throw std::runtime_error("key 'step' = " + (step == j.end() ? std::string("(missing)") : step->dump()) +
                             ": expected an integer >= 0");
  const auto files = j.find("files");
  if (files == j.end() || !files->is_array()) throw std::runtime_error("key 'files' is not a list");
  CheckpointManifest m;
  m.step = step->get<int64_t>();
  for (const auto& f : *files) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || !f.contains("size") ||
        !f["size"].is_number_integer() || f["size"].get<int64_t>() < 0 || !f.contains("sha256") ||
        !f["sha256"].is_string() || f["sha256"].get<std::string>().size() != 64 ||
        !is_lower_hex(f["sha256"].get<std::string>()))
      throw std::runtime_error("malformed entry in 'files': " + f.dump() +
                               " (expected {\"name\": string, \"size\": integer >= 0, \"sha256\": 64 hex digits})");
    m.files.push_back({f["name"].get<std::string>(), f["size"].get<int64_t>(), f["sha256"].get<std::string>()});
  }
  return m;
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("write", path, errno);
  const char* data = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      io_error("write", path, error);
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  // Delayed allocation can report a full disk only here.
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    io_error("write", path, error);
  }
  if (::close(fd) != 0) io_error("write", path, errno);
}

void fsync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_error("open directory", path, errno);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) io_error("fsync directory", path, error);
}

bool read_file_bytes(const std::string& path, std::string& bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    io_error("read", path, errno);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    io_error("read", path, error);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error("cannot read '" + path + "': not a regular file");
  }
  bytes.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (true) {
    if (done == bytes.size()) bytes.resize(bytes.size() + 4096);  // the file grew since fstat
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      io_error("read", path, error);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return true;
}

}  // namespace difftrain
