// How every difftrain command ends on an error: one "difftrain: error: ..." line
// on stderr ("[rank r]" added under MPI with more than one rank), then the whole
// job ends (MpiSession::abort_job), so no peer waits in a collective.
#pragma once

#include <string>

namespace difftrain::cli {

// The rank and world size named in the message; set once MPI is up.
void set_error_rank(int rank, int world_size);

[[noreturn]] void fail(const std::string& message);

}  // namespace difftrain::cli
