// A failure drill for the collective timeout, run by tests/failure_tests.py under mpirun:
//   mpi_failure_drill MODE RANK
// Every rank runs 8 steps of one all-reduce each ("drill: step i"), with a 3 s
// collective timeout. At step 3, rank RANK misbehaves:
//   hang   its training thread sleeps 60 s (the process, and its communication thread, live on)
//   throw  it throws, as a failing data read would
//   kill   it sends itself SIGKILL
// Errors take the CLI's path: one "difftrain: error [rank r]: ..." line, then MPI_Abort.
#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

#include "distributed/communicator.h"
#include "distributed/mpi_session.h"

using namespace difftrain;

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: mpi_failure_drill hang|throw|kill RANK\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int culprit = std::stoi(argv[2]);
  try {
    auto comm = make_communicator(session, torch::kCPU, {3.0});
    for (int step = 0; step < 8; ++step) {
      if (step == 3 && comm->rank() == culprit) {
        if (mode == "hang") std::this_thread::sleep_for(std::chrono::seconds(60));
        if (mode == "throw") throw std::runtime_error("drill: rank " + std::to_string(culprit) + " failed at step 3");
        if (mode == "kill") std::raise(SIGKILL);
      }
      auto x = torch::full({1000}, static_cast<float>(comm->rank()));
      comm->allreduce_mean({x}, "drill: step " + std::to_string(step));
    }
    std::printf("rank %d: all steps done\n", comm->rank());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "difftrain: error [rank %d]: %s\n", session.rank(), e.what());
    std::fflush(stderr);
    MpiSession::abort_job(1);
  }
  return 0;
}
