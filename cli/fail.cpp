#include "cli/fail.h"

#include <cstdio>

#include "distributed/mpi_session.h"

namespace difftrain::cli {
namespace {
int g_rank = 0, g_world = 1;
}  // namespace

void set_error_rank(int rank, int world_size) { g_rank = rank, g_world = world_size; }

void fail(const std::string& message) {
  if (g_world > 1) std::fprintf(stderr, "difftrain: error [rank %d]: %s\n", g_rank, message.c_str());
  else std::fprintf(stderr, "difftrain: error: %s\n", message.c_str());
  std::fflush(stderr);
  MpiSession::abort_job(1);
}

}  // namespace difftrain::cli
