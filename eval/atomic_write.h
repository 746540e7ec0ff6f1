// write_file_atomically: readers (an evaluation scanning a sample folder, a
// resumed run) see either the old file or the complete new one, never a
// truncated write from a killed job.
#pragma once

#include <string>

namespace difftrain::eval {

// Writes `bytes` to path + ".tmp", fsyncs, then renames over `path`; a `path`
// that is a device or pipe (/dev/stdout) is written in place instead. Every
// write is checked: throws std::runtime_error naming `path` and the OS error
// ("No space left on device"); the temporary file is removed.
void write_file_atomically(const std::string& path, const void* bytes, size_t size);

}  // namespace difftrain::eval
