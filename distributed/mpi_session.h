// Process-wide MPI lifetime and topology. Local rank comes from MPI's
// node-local communicator (MPI_Comm_split_type SHARED), not from any one
// launcher's environment variables, so mpirun and srun behave the same.
#pragma once

namespace difftrain {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);  // MPI_Init_thread (MULTIPLE): see distributed/mpi_worker.h
  ~MpiSession();                        // MPI_Finalize
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

  // Ends every rank of the job: used when one rank fails, so no peer hangs in a collective.
  [[noreturn]] static void abort_job(int exit_code);

 private:
  int rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace difftrain
