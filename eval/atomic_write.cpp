#include "eval/atomic_write.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace difftrain::eval {
namespace {

[[noreturn]] void fail(const std::string& path, const char* what, int error) {
  throw std::runtime_error("cannot write " + path + ": " + what + ": " + std::strerror(error));
}

// Every byte, or the errno of the write that failed (0 on success).
int write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

// A device or pipe (/dev/stdout, /dev/full) is written in place: renaming a
// temporary file over it would replace the device node itself.
void write_in_place(const std::string& path, const char* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "open", errno);
  if (const int error = write_all(fd, data, size)) {
    ::close(fd);
    fail(path, "write", error);
  }
  if (::close(fd) != 0) fail(path, "close", errno);
}

}  // namespace

void write_file_atomically(const std::string& path, const void* bytes, size_t size) {
  const char* data = static_cast<const char*>(bytes);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) fail(path, "open", EISDIR);
    write_in_place(path, data, size);
    return;
  }

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "open", errno);
  if (const int error = write_all(fd, data, size)) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(path, "write", error);
  }
  // Delayed allocation can report a full disk only at fsync or close.
  const bool synced = ::fsync(fd) == 0;
  const int sync_error = errno;
  if (::close(fd) != 0 || !synced) {
    const int error = synced ? errno : sync_error;
    ::unlink(tmp.c_str());
    fail(path, synced ? "close" : "fsync", error);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    fail(path, "rename", error);
  }
}

}  // namespace difftrain::eval
