#include "distributed/gradient_reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "distributed/communicator.h"

namespace difftrain {

std::vector<std::vector<size_t>> plan_buckets(const std::vector<int64_t>& parameter_bytes, int64_t cap_bytes,
                                              int64_t first_cap_bytes) {
  if (cap_bytes <= 0 || first_cap_bytes <= 0) throw std::invalid_argument("bucket capacity must be > 0 bytes");
  std::vector<std::vector<size_t>> buckets;
  int64_t filled = 0;
  for (size_t k = parameter_bytes.size(); k-- > 0;) {
    const int64_t bytes = parameter_bytes[k];
    const int64_t cap = buckets.size() == 1 ? std::min(cap_bytes, first_cap_bytes) : cap_bytes;
    if (buckets.empty() || (filled > 0 && filled + bytes > cap)) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(k);
    filled += bytes;
  }
  return buckets;
}

// Runs after autograd has accumulated a parameter's gradient into .grad.
class GradientReducer::ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(GradientReducer* reducer, size_t parameter) : reducer_(reducer), parameter_(parameter) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    reducer_->mark_ready(parameter_);
    return outputs;
  }

 private:
  GradientReducer* reducer_;
  size_t parameter_;
};

GradientReducer::GradientReducer(const std::vector<torch::Tensor>& parameters, Communicator& comm,
                                 int64_t bucket_cap_bytes, int64_t first_bucket_cap_bytes)
    : comm_(comm), parameters_(parameters) {
  if (parameters_.empty()) throw std::invalid_argument("GradientReducer: no parameters");
  std::vector<int64_t> bytes;
  for (const auto& p : parameters_) {
    TORCH_CHECK(p.is_contiguous() && p.requires_grad(), "GradientReducer: parameters must be contiguous leaves");
    TORCH_CHECK(p.scalar_type() == parameters_[0].scalar_type() && p.device() == parameters_[0].device(),
                "GradientReducer: parameters must share one dtype and device");
    bytes.push_back(p.numel() * static_cast<int64_t>(p.element_size()));
  }
  const auto plan = plan_buckets(bytes, bucket_cap_bytes, first_bucket_cap_bytes);
  gradients_.resize(parameters_.size());
  bucket_of_.resize(parameters_.size());
  ready_.assign(parameters_.size(), false);
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < plan.size(); ++b) {
    Bucket bucket;
    bucket.parameters = plan[b];
    int64_t numel = 0;
    for (size_t k : plan[b]) numel += parameters_[k].numel();
    bucket.buffer = torch::zeros({numel}, parameters_[0].options().requires_grad(false));
    int64_t offset = 0;
    for (size_t k : plan[b]) {
      auto& p = parameters_[k];
      auto view = bucket.buffer.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) view.copy_(p.grad());
      p.mutable_grad() = view;
      gradients_[k] = view;
      bucket_of_[k] = b;
      offset += p.numel();
    }
    flat_gradients_.push_back(bucket.buffer);
    buckets_.push_back(std::move(bucket));
  }
  for (size_t k = 0; k < parameters_.size(); ++k) {
    auto accumulator = torch::autograd::impl::grad_accumulator(parameters_[k]);
    TORCH_CHECK(accumulator, "GradientReducer: parameter ", k, " has no gradient accumulator");
    hook_keys_.push_back(accumulator->add_post_hook(std::make_unique<ReadyHook>(this, k)));
    accumulators_.push_back(std::move(accumulator));
  }
}

GradientReducer::~GradientReducer() {
  for (size_t k = 0; k < accumulators_.size(); ++k) accumulators_[k]->del_post_hook(hook_keys_[k]);
  // A collective still in flight (an exception between backward and finish) must end
  // before its buffer goes; failures here are already being reported by the caller.
  for (auto& bucket : buckets_) {
    if (!bucket.collective) continue;
    try {
      bucket.collective->wait();
    } catch (...) {
    }
  }
}

void GradientReducer::begin_backward(bool sync) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (next_bucket_ != 0) throw std::logic_error("GradientReducer: begin_backward before the last step's finish()");
  sync_ = sync;
  std::fill(ready_.begin(), ready_.end(), false);
  for (auto& bucket : buckets_) bucket.pending_gradients = bucket.parameters.size();
  started_in_backward_ = 0;
}

void GradientReducer::mark_ready(size_t parameter) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!sync_) return;
  if (ready_[parameter])
    throw std::logic_error("GradientReducer: parameter " + std::to_string(parameter) +
                           " received a second gradient in one backward after its bucket was marked ready");
  ready_[parameter] = true;
  Bucket& bucket = buckets_[bucket_of_[parameter]];
  bucket.pending_gradients -= 1;
  if (bucket.pending_gradients == 0) {
    const size_t before = next_bucket_;
    start_ready_buckets();
    started_in_backward_ += static_cast<int64_t>(next_bucket_ - before);
  }
}

void GradientReducer::start_ready_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending_gradients == 0) start_bucket(next_bucket_++);
}

void GradientReducer::start_bucket(size_t b) {
  Bucket& bucket = buckets_[b];
  const double megabytes = static_cast<double>(bucket.buffer.numel() * bucket.buffer.element_size()) / 1e6;
  char what[96];
  std::snprintf(what, sizeof what, "gradients: bucket %zu of %zu (%.2f MB)", b + 1, buckets_.size(), megabytes);
  bucket.collective = comm_.allreduce_mean_async(bucket.buffer, what);
}

void GradientReducer::finish() {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!sync_) throw std::logic_error("GradientReducer: finish() after a backward that was not synchronised");
    // Gradients that never arrived (parameters unused this step) are final as they are.
    for (auto& bucket : buckets_) bucket.pending_gradients = 0;
    start_ready_buckets();
    sync_ = false;
  }
  ReducerStepStats stats;
  stats.buckets = static_cast<int64_t>(buckets_.size());
  stats.buckets_started_in_backward = started_in_backward_;
  for (auto& bucket : buckets_) {
    bucket.collective->wait();
    stats.communication_seconds += bucket.collective->seconds();
    bucket.collective.reset();
  }
  next_bucket_ = 0;
  stats.wait_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  last_step_ = stats;
}

void GradientReducer::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) bucket.buffer.zero_();
}

}  // namespace difftrain
