#include "cli/allocator_tuning.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace difftrain::cli {

void tune_allocator() {
  const char* choice = std::getenv("DIFFTRAIN_MALLOC");
  if (choice != nullptr && std::strcmp(choice, "system") == 0) return;
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);  // glibc's maximum on 64-bit: larger blocks are still mapped
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
}

}  // namespace difftrain::cli
