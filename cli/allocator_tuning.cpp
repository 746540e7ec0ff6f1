#include "cli/allocator_tuning.h"

#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "trainer/caching_cpu_allocator.h"

namespace difftrain::cli {

void tune_allocator() {
  const char* choice = std::getenv("DIFFTRAIN_MALLOC");
  if (choice != nullptr && std::strcmp(choice, "system") == 0) return;
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);  // glibc's maximum on 64-bit: larger blocks are still mapped
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
  try {
    trainer::install_caching_cpu_allocator();  // blocks of 1 MiB and more, those above 32 MiB included
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "difftrain: error: %s\n", e.what());
    std::exit(2);
  }
}

}  // namespace difftrain::cli
