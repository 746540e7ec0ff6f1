// One training job per run directory. `<run.dir>/.lock` is held with an
// advisory flock(2) for the whole job by rank 0: the kernel releases it when
// the process ends in any way (exit, crash, kill -9), so a dead job never
// leaves a stale lock and no one has to delete a file by hand. The file's
// contents (pid, host, start time) are only there to name the holder in the
// error; the lock is the flock, not the file's existence.
//
// flock works between processes of one host and on NFSv4 (where Linux maps it
// to a byte-range lock); on filesystems without locking support acquiring fails
// with a clear error rather than silently letting two jobs in.
#pragma once

#include <string>

namespace difftrain {

class RunDirectoryLock {
 public:
  // Creates run_dir if needed. Throws std::runtime_error naming the directory
  // and the holder when another process holds the lock; never waits.
  explicit RunDirectoryLock(const std::string& run_dir);
  ~RunDirectoryLock();
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;

  static std::string lock_path(const std::string& run_dir);

 private:
  int fd_ = -1;
};

}  // namespace difftrain
