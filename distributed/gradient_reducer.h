// GradientReducer: gradient averaging as PyTorch DDP does it (Li et al.,
// "PyTorch Distributed", VLDB 2020, section 3.2; c10d/reducer.cpp).
//
// - Buckets: parameters are grouped, in reverse registration order (the order
//   in which backward produces their gradients), into buckets of at most
//   `bucket_cap_bytes` (distributed.bucket_mb, default 25 MB); the first one
//   (the last layers, whose gradients come first) at most
//   distributed.first_bucket_mb (1 MB, as in DDP).
// - Gradients are views into the buckets: each parameter's .grad is a slice
//   of its bucket's flat buffer, so autograd accumulates straight into the
//   buffer that is all-reduced and the averaged values need no copy back.
// - Overlap: a post-hook on every parameter's gradient accumulator marks it
//   ready during backward; when a bucket's last gradient is ready the bucket's
//   all-reduce starts (Communicator::allreduce_mean_async) while backward goes
//   on with earlier layers. Buckets start strictly in bucket order, so every
//   rank issues the same collectives in the same order whatever order its
//   hooks fire in.
// - finish() starts the buckets that never filled (a parameter unused this
//   step adds its zeros) and waits for all: afterwards every .grad holds the
//   mean over ranks, before the optimizer reads it.
// - Gradient accumulation: begin_backward(false) for all but the last
//   micro-batch of a step (DDP's no_sync): gradients only add up locally, and
//   the step pays for one synchronisation.
//
// Threading: hooks run on autograd's thread for the parameters' device (the
// caller's thread on CPU), while the caller is blocked in backward(); all
// other calls come from the training thread.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace torch::autograd {
struct Node;
}

namespace difftrain {

class Communicator;
class PendingCollective;

// Parameter indices per bucket, buckets in launch order: parameters from last to first,
// each bucket filled up to `cap_bytes`; a parameter larger than the cap gets its own bucket.
// The first bucket is capped at `first_cap_bytes` as well, so communication starts
// early in backward (DDP's 1 MB first bucket, dist._DEFAULT_FIRST_BUCKET_BYTES).
std::vector<std::vector<size_t>> plan_buckets(const std::vector<int64_t>& parameter_bytes, int64_t cap_bytes,
                                              int64_t first_cap_bytes);

struct ReducerStepStats {
  double wait_seconds = 0;           // finish(): the training thread waiting on communication
  double communication_seconds = 0;  // summed time the buckets' collectives took (MPI backend)
  int64_t buckets = 0;
  int64_t buckets_started_in_backward = 0;  // the rest started in finish()
};

class GradientReducer {
 public:
  // `parameters` must be contiguous, of one dtype and device, and stay in place (no .to()).
  GradientReducer(const std::vector<torch::Tensor>& parameters, Communicator& comm, int64_t bucket_cap_bytes,
                  int64_t first_bucket_cap_bytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before each micro-batch's backward; sync = is this the step's last micro-batch.
  void begin_backward(bool sync);
  // After the synchronising backward: every gradient becomes its mean over ranks.
  void finish();
  void zero_grad();

  const std::vector<torch::Tensor>& gradients() const { return gradients_; }  // one view per parameter
  // The same values as gradients(), one flat tensor per bucket: whole-gradient work (the finite
  // check, the norm, clipping, loss unscaling) takes a few passes over these instead of one small
  // operation per parameter (issue 12: 575 scalar reads and ~1 150 small kernels per step at the
  // 32 px model).
  const std::vector<torch::Tensor>& flat_gradients() const { return flat_gradients_; }
  size_t bucket_count() const { return buckets_.size(); }
  const ReducerStepStats& last_step() const { return last_step_; }

 private:
  struct Bucket {
    std::vector<size_t> parameters;  // indices into parameters_
    torch::Tensor buffer;            // (sum of the parameters' numel), the parameters' dtype and device
    size_t pending_gradients = 0;    // not yet ready this backward
    std::unique_ptr<PendingCollective> collective;
  };
  class ReadyHook;

  void mark_ready(size_t parameter);  // autograd's post-hook
  void start_ready_buckets();         // in bucket order, as far as they are complete
  void start_bucket(size_t b);

  Communicator& comm_;
  std::vector<torch::Tensor> parameters_;
  std::vector<torch::Tensor> gradients_;  // (parameters): views into bucket buffers
  std::vector<torch::Tensor> flat_gradients_;  // (buckets): the buffers
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;         // (parameters)
  std::vector<bool> ready_;               // (parameters): gradient final this backward
  // Held so autograd keeps reusing them (tensors only hold them weakly), with our hook keys.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;

  std::mutex mutex_;  // hooks (autograd's thread) against the training thread
  bool sync_ = false;
  size_t next_bucket_ = 0;  // buckets [0, next_bucket_) have started this step
  int64_t started_in_backward_ = 0;
  ReducerStepStats last_step_;
};

}  // namespace difftrain
