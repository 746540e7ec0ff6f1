#include "model/activation_checkpoint.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>

#include <algorithm>
#include <mutex>

namespace difftrain::model {
namespace {

// What the recompute needs besides the saved inputs. Held by the autograd context
// (whose non-tensor slots are IValues, hence the CustomClassHolder capsule).
struct RecomputeState : torch::CustomClassHolder {
  CheckpointedFn fn;
  c10::Device device = torch::kCPU;
  torch::Tensor cpu_rng_state;
  torch::Tensor device_rng_state;  // defined when the inputs live off the CPU
  bool cpu_autocast = false, gpu_autocast = false;
  at::ScalarType cpu_autocast_dtype = at::kBFloat16, gpu_autocast_dtype = at::kHalf;
};

at::Generator default_generator(c10::Device device) { return at::globalContext().defaultGenerator(device); }

torch::Tensor rng_state(c10::Device device) {
  auto gen = default_generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(c10::Device device, const torch::Tensor& state) {
  auto gen = default_generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Puts the forward's RNG state back for the recompute (so dropout draws the same
// masks) and restores the current state afterwards, so backward consumes no draws:
// a run with checkpointing follows the same random stream as one without.
class ForkedRng {
 public:
  explicit ForkedRng(const RecomputeState& s) : device_(s.device), cpu_(rng_state(torch::kCPU)) {
    if (s.device_rng_state.defined()) other_ = rng_state(device_);
    set_rng_state(torch::kCPU, s.cpu_rng_state);
    if (s.device_rng_state.defined()) set_rng_state(device_, s.device_rng_state);
  }
  ~ForkedRng() {
    set_rng_state(torch::kCPU, cpu_);
    if (other_.defined()) set_rng_state(device_, other_);
  }
  ForkedRng(const ForkedRng&) = delete;
  ForkedRng& operator=(const ForkedRng&) = delete;

 private:
  c10::Device device_;
  torch::Tensor cpu_, other_;
};

// Backward runs outside the trainer's autocast scope of the forward: the
// recompute re-enters the forward's autocast state so it computes in the same dtypes.
class SameAutocast {
 public:
  explicit SameAutocast(const RecomputeState& s)
      : cpu_(at::autocast::is_cpu_enabled()),
        gpu_(at::autocast::is_enabled()),
        cpu_dtype_(at::autocast::get_autocast_cpu_dtype()),
        gpu_dtype_(at::autocast::get_autocast_gpu_dtype()) {
    at::autocast::set_autocast_cpu_dtype(s.cpu_autocast_dtype);
    at::autocast::set_autocast_gpu_dtype(s.gpu_autocast_dtype);
    at::autocast::set_cpu_enabled(s.cpu_autocast);
    at::autocast::set_enabled(s.gpu_autocast);
  }
  ~SameAutocast() {
    at::autocast::set_cpu_enabled(cpu_);
    at::autocast::set_enabled(gpu_);
    at::autocast::set_autocast_cpu_dtype(cpu_dtype_);
    at::autocast::set_autocast_gpu_dtype(gpu_dtype_);
    // The recompute's casts of the weights carry autograd history of this backward only.
    if (!cpu_ && !gpu_) at::autocast::clear_cache();
  }
  SameAutocast(const SameAutocast&) = delete;
  SameAutocast& operator=(const SameAutocast&) = delete;

 private:
  bool cpu_, gpu_;
  at::ScalarType cpu_dtype_, gpu_dtype_;
};

// Autocast caches its low-precision copies of fp32 leaf weights for the rest of
// the autocast scope. A copy made by the no-grad forward has no autograd history;
// a later use of that weight with grad mode on (a recompute inside the same scope)
// would pick it up and the weight would get no gradient. So the no-grad forward
// does not cache.
class NoAutocastCache {
 public:
  NoAutocastCache() : enabled_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~NoAutocastCache() { at::autocast::set_autocast_cache_enabled(enabled_); }
  NoAutocastCache(const NoAutocastCache&) = delete;
  NoAutocastCache& operator=(const NoAutocastCache&) = delete;

 private:
  bool enabled_;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // Function<>::apply runs this with grad mode off: fn builds no graph and keeps no activations.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, c10::intrusive_ptr<RecomputeState> state,
                               torch::TensorList inputs) {
    state->cpu_rng_state = rng_state(torch::kCPU);
    if (state->device.type() != torch::kCPU) state->device_rng_state = rng_state(state->device);
    state->cpu_autocast = at::autocast::is_cpu_enabled();
    state->gpu_autocast = at::autocast::is_enabled();
    state->cpu_autocast_dtype = at::autocast::get_autocast_cpu_dtype();
    state->gpu_autocast_dtype = at::autocast::get_autocast_gpu_dtype();
    ctx->save_for_backward(inputs.vec());
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    NoAutocastCache no_cache;
    return state->fn(inputs.vec());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto state = c10::static_intrusive_pointer_cast<RecomputeState>(ctx->saved_data["state"].toCapsule());
    std::vector<torch::Tensor> detached;
    for (const auto& input : ctx->get_saved_variables()) {
      auto d = input.detach();
      d.requires_grad_(input.requires_grad());
      detached.push_back(d);
    }
    torch::Tensor output;
    {
      ForkedRng rng(*state);
      SameAutocast autocast(*state);
      torch::AutoGradMode grad(true);
      output = state->fn(detached);
    }
    auto grad = grad_outputs.at(0).defined() ? grad_outputs[0] : torch::zeros_like(output);
    // Reentrant backward: every leaf reached accumulates into its .grad, the
    // parameters as in a plain backward, and the detached inputs, read below.
    torch::autograd::backward({output}, {grad});
    torch::autograd::variable_list grads{torch::Tensor()};  // for `state`
    for (const auto& d : detached) grads.push_back(d.requires_grad() ? d.grad() : torch::Tensor());
    return grads;
  }
};

}  // namespace

torch::Tensor checkpoint(const CheckpointedFn& fn, const std::vector<torch::Tensor>& inputs) {
  const bool any_requires_grad =
      std::any_of(inputs.begin(), inputs.end(), [](const torch::Tensor& t) { return t.requires_grad(); });
  // With no input requiring grad the node would not be recorded and the
  // parameters inside fn would get no gradient: run fn as it is.
  if (!torch::GradMode::is_enabled() || !any_requires_grad) return fn(inputs);
  auto state = c10::make_intrusive<RecomputeState>();
  state->fn = fn;
  for (const auto& t : inputs)
    if (t.defined() && t.device().type() != torch::kCPU) state->device = t.device();
  return CheckpointFunction::apply(state, torch::TensorList(inputs));
}

}  // namespace difftrain::model
