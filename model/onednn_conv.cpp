#include "model/onednn_conv.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>

#ifdef DIFFTRAIN_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

namespace difftrain::model {

bool onednn_conv_enabled() {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  static const bool enabled = [] {
    const char* value = std::getenv("DIFFTRAIN_CONV");
    if (value == nullptr || std::strcmp(value, "onednn") == 0) return true;
    if (std::strcmp(value, "libtorch") == 0) return false;
    throw std::runtime_error(std::string("DIFFTRAIN_CONV=") + value +
                             ": expected onednn (the default) or libtorch (LibTorch's own convolutions)");
  }();
  return enabled;
#else
  return false;
#endif
}

#ifdef DIFFTRAIN_HAVE_ONEDNN
namespace {
using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& engine() {
  thread_local dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

// A oneDNN memory in a LibTorch-owned buffer (so it comes from LibTorch's allocator).
struct Buffer {
  at::Tensor storage;
  memory mem;
};
Buffer buffer(const memory::desc& desc) {
  auto storage = at::empty({static_cast<int64_t>((desc.get_size() + 3) / 4)}, at::kFloat);
  return {storage, memory(desc, engine(), storage.data_ptr())};
}

// A reorder between two layouts, or nothing where they are the same.
struct Reorder {
  std::optional<dnnl::reorder> primitive;
  Reorder() = default;
  Reorder(const memory::desc& from, const memory::desc& to) {
    if (from != to) primitive.emplace(dnnl::reorder::primitive_desc(engine(), from, engine(), to));
  }
  // `from` into a new buffer of layout `to` (or `from` itself where no reorder is needed).
  Buffer operator()(const Buffer& from, const memory::desc& to) const {
    if (!primitive) return from;
    Buffer out = buffer(to);
    primitive->execute(stream(), {{DNNL_ARG_FROM, from.mem}, {DNNL_ARG_TO, out.mem}});
    return out;
  }
  // `from` into an existing buffer (a LibTorch tensor in the user's layout).
  void into(const Buffer& from, const Buffer& to) const {
    if (primitive) {
      primitive->execute(stream(), {{DNNL_ARG_FROM, from.mem}, {DNNL_ARG_TO, to.mem}});
    } else {
      std::memcpy(to.mem.get_data_handle(), from.mem.get_data_handle(), from.mem.get_desc().get_size());
    }
  }
};

// Everything one shape needs, created once per thread (creating primitives costs far more than running them).
struct Plan {
  memory::desc user_src, user_weights, user_bias, user_dst;
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc backward_data_pd;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights backward_weights;
  Reorder src_in, weights_forward, dst_out;                  // forward
  Reorder grad_in_data, weights_backward, grad_src_out;      // backward by data
  Reorder grad_in_weights, src_for_weights, grad_weights_out;  // backward by weights
  bool shared_diff_dst = false;  // both backward kernels read the upstream gradient in one layout: reorder it once
  int64_t out_h = 0, out_w = 0;
};

// A square kernel with equal stride and zero padding on both axes (the UNet's 3×3 convolutions at stride 1
// and 2, its 1×1 projections).
struct Geometry {
  int64_t kernel, stride, padding;
  bool operator<(const Geometry& o) const {
    return std::tie(kernel, stride, padding) < std::tie(o.kernel, o.stride, o.padding);
  }
  bool winograd_shape() const { return kernel == 3 && stride == 1 && padding == 1; }
};

using Type = memory::data_type;
memory::desc plain(const memory::dims& dims, Tag tag, Type type = Type::f32) { return memory::desc(dims, type, tag); }

// float32 Winograd, or bf16 direct under bf16 autocast (onednn_conv.h).
enum class Mode { kWinogradF32, kDirectBf16 };

// Whether oneDNN picked one of its JIT kernels (never the reference loops, which are far slower than LibTorch).
bool jit(const dnnl::primitive_desc_base& pd) { return std::string(pd.impl_info_str()).find("jit") != std::string::npos; }

// nullptr where oneDNN has no JIT kernel for the shape (the caller takes torch::conv2d).
// src_type: the input's dtype (under autocast a float32 or bf16 activation); the weights are float32.
std::shared_ptr<Plan> make_plan(int64_t n, int64_t ic, int64_t oc, int64_t h, int64_t w, bool bias, Mode mode,
                                Type src_type, Geometry g) {
  const memory::dims strides{g.stride, g.stride}, padding{g.padding, g.padding};
  const int64_t out_h = (h + 2 * g.padding - g.kernel) / g.stride + 1, out_w = (w + 2 * g.padding - g.kernel) / g.stride + 1;
  if (out_h < 1 || out_w < 1) return nullptr;
  const bool bf16 = mode == Mode::kDirectBf16;
  // The kernels' types: everything float32 for Winograd; bf16 operands with float32 bias and
  // weight gradient for bf16 (oneDNN accumulates in float32 either way).
  const Type compute = bf16 ? Type::bf16 : Type::f32;
  auto any = [](const memory::dims& dims, Type type) { return memory::desc(dims, type, Tag::any); };
  const memory::dims src{n, ic, h, w}, weights{oc, ic, g.kernel, g.kernel}, dst{n, oc, out_h, out_w}, bias_dims{oc};
  auto plan = std::make_shared<Plan>();
  plan->out_h = out_h;
  plan->out_w = out_w;
  plan->user_src = plain(src, Tag::nchw, src_type);
  plan->user_weights = plain(weights, Tag::oihw);
  plan->user_bias = plain(bias_dims, Tag::x);
  plan->user_dst = plain(dst, Tag::nchw, compute);
  const auto algorithm = bf16 ? dnnl::algorithm::convolution_direct : dnnl::algorithm::convolution_winograd;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const memory::desc no_bias;
  try {
    plan->forward_pd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algorithm, any(src, compute),
                                        any(weights, compute), bias ? plan->user_bias : no_bias, any(dst, compute),
                                        strides, padding, padding),
        attr, engine());
    plan->backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(algorithm, any(src, compute), any(weights, compute), any(dst, compute),
                                              strides, padding, padding),
        attr, engine(), plan->forward_pd);
    plan->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(algorithm, any(src, compute), any(weights, Type::f32),
                                                 bias ? plan->user_bias : no_bias, any(dst, compute), strides,
                                                 padding, padding),
        attr, engine(), plan->forward_pd);
  } catch (const dnnl::error&) {
    return nullptr;  // no implementation of this algorithm for this shape on this CPU
  }
  const auto& f = plan->forward_pd;
  const auto& bd = plan->backward_data_pd;
  const auto& bw = plan->backward_weights_pd;
  if (!jit(f) || !jit(bd) || !jit(bw)) return nullptr;
  plan->forward = dnnl::convolution_forward(f);
  plan->backward_data = dnnl::convolution_backward_data(bd);
  plan->backward_weights = dnnl::convolution_backward_weights(bw);
  // Each reorder also converts types where they differ (float32 input or weights to bf16, bf16 gradient to
  // the input's dtype): eager autocast's casts, fused into the layout change.
  plan->src_in = Reorder(plan->user_src, f.src_desc());
  plan->weights_forward = Reorder(plan->user_weights, f.weights_desc());
  plan->dst_out = Reorder(f.dst_desc(), plan->user_dst);
  plan->grad_in_data = Reorder(plan->user_dst, bd.diff_dst_desc());
  plan->weights_backward = Reorder(plan->user_weights, bd.weights_desc());
  plan->grad_src_out = Reorder(bd.diff_src_desc(), plan->user_src);
  plan->grad_in_weights = Reorder(plan->user_dst, bw.diff_dst_desc());
  plan->src_for_weights = Reorder(f.src_desc(), bw.src_desc());
  plan->grad_weights_out = Reorder(bw.diff_weights_desc(), plan->user_weights);
  plan->shared_diff_dst = bd.diff_dst_desc() == bw.diff_dst_desc();
  return plan;
}

Type dnnl_type(at::ScalarType type) { return type == at::kBFloat16 ? Type::bf16 : Type::f32; }

std::shared_ptr<Plan> plan_for(at::IntArrayRef x_sizes, int64_t out_channels, bool bias, Mode mode,
                               at::ScalarType x_type, Geometry g) {
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool, int, Mode, at::ScalarType, Geometry>;
  thread_local std::map<Key, std::shared_ptr<Plan>> plans;
  const int64_t n = x_sizes[0], ic = x_sizes[1], h = x_sizes[2], w = x_sizes[3];
  const Key key{n, ic, out_channels, h, w, bias, at::get_num_threads(), mode, x_type, g};
  auto found = plans.find(key);
  if (found == plans.end()) {
    if (plans.size() >= 256) plans.clear();  // shapes churn only in unusual callers
    found = plans.emplace(key, make_plan(n, ic, out_channels, h, w, bias, mode, dnnl_type(x_type), g)).first;
  }
  return found->second;
}

Buffer user_buffer(const at::Tensor& contiguous, const memory::desc& desc) {
  return {contiguous, memory(desc, engine(), contiguous.data_ptr())};
}

// One scratchpad per thread, grown to the largest any primitive asked for: the Winograd
// transforms of a layer's tensors are 2.25x its size, and a fresh buffer of every size
// per call would stay in the allocator's cache (peak RSS 1.82 vs 1.48 GB at the 32 px model).
void run(dnnl::primitive& primitive, const dnnl::primitive_desc_base& pd,
         std::unordered_map<int, memory> args) {
  thread_local at::Tensor scratch;
  const memory::desc desc = pd.scratchpad_desc();
  const auto floats = static_cast<int64_t>((desc.get_size() + 3) / 4);
  if (!scratch.defined() || scratch.numel() < floats) {
    scratch = at::Tensor();  // the old one goes back first
    scratch = at::empty({floats}, at::kFloat);
  }
  args.emplace(DNNL_ARG_SCRATCHPAD, memory(desc, engine(), scratch.data_ptr()));
  primitive.execute(stream(), args);
}

// y = conv(x); keeps the source in the kernel's layout for the backward by weights.
at::Tensor run_forward(Plan& plan, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   Buffer* kept_src) {
  const auto& pd = plan.forward_pd;
  const Buffer src = plan.src_in(user_buffer(x, plan.user_src), pd.src_desc());
  const Buffer weights = plan.weights_forward(user_buffer(weight, plan.user_weights), pd.weights_desc());
  const Buffer dst = buffer(pd.dst_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_WEIGHTS, weights.mem}, {DNNL_ARG_DST, dst.mem}};
  if (bias.defined()) args.emplace(DNNL_ARG_BIAS, memory(plan.user_bias, engine(), bias.data_ptr()));
  run(plan.forward, pd, std::move(args));
  const auto y_type = plan.user_dst.data_type() == Type::bf16 ? at::kBFloat16 : at::kFloat;
  auto y = at::empty({x.size(0), weight.size(0), plan.out_h, plan.out_w}, x.options().dtype(y_type));
  plan.dst_out.into(dst, user_buffer(y, plan.user_dst));
  stream().wait();
  if (kept_src != nullptr) *kept_src = src;
  return y;
}

struct OnednnConvFunction : torch::autograd::Function<OnednnConvFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& maybe_bias, int64_t mode, int64_t stride, int64_t padding) {
    const at::Tensor bias = maybe_bias.numel() > 0 ? maybe_bias : at::Tensor();
    const Geometry g{weight.size(2), stride, padding};
    auto plan = plan_for(x.sizes(), weight.size(0), bias.defined(), static_cast<Mode>(mode), x.scalar_type(), g);
    Buffer src;
    auto y = run_forward(*plan, x.contiguous(), weight.contiguous(), bias, &src);
    // The source in the kernel's layout and type (x's values, bf16 in bf16 mode) replaces x among the saved tensors.
    ctx->save_for_backward({src.storage, weight});
    ctx->saved_data["has_bias"] = bias.defined();
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_type"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& src_storage = saved[0];
    const at::Tensor weight = saved[1].contiguous();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto x_type = static_cast<at::ScalarType>(ctx->saved_data["x_type"].toInt());
    const auto mode = static_cast<Mode>(ctx->saved_data["mode"].toInt());
    const Geometry g{weight.size(2), ctx->saved_data["stride"].toInt(), ctx->saved_data["padding"].toInt()};
    auto plan = plan_for(x_sizes, weight.size(0), has_bias, mode, x_type, g);
    const auto y_type = plan->user_dst.data_type() == Type::bf16 ? at::kBFloat16 : at::kFloat;
    const at::Tensor grad = grads[0].to(y_type).contiguous();
    const Buffer grad_user = user_buffer(grad, plan->user_dst);
    const bool data = ctx->needs_input_grad(0);
    const bool weights = ctx->needs_input_grad(1) || (has_bias && ctx->needs_input_grad(2));
    at::Tensor grad_x, grad_weight, grad_bias;
    Buffer diff_dst;  // the upstream gradient in the backward kernels' layout
    if (data) {
      const auto& pd = plan->backward_data_pd;
      diff_dst = plan->grad_in_data(grad_user, pd.diff_dst_desc());
      const Buffer weights_blocked =
          plan->weights_backward(user_buffer(weight, plan->user_weights), pd.weights_desc());
      const Buffer diff_src = buffer(pd.diff_src_desc());
      run(plan->backward_data, pd,
          {{DNNL_ARG_DIFF_DST, diff_dst.mem}, {DNNL_ARG_WEIGHTS, weights_blocked.mem}, {DNNL_ARG_DIFF_SRC, diff_src.mem}});
      grad_x = at::empty(x_sizes, weight.options().dtype(x_type));
      plan->grad_src_out.into(diff_src, user_buffer(grad_x, plan->user_src));
    }
    if (weights) {
      const auto& pd = plan->backward_weights_pd;
      if (!data || !plan->shared_diff_dst) diff_dst = plan->grad_in_weights(grad_user, pd.diff_dst_desc());
      const Buffer src = plan->src_for_weights(
          Buffer{src_storage, memory(plan->forward_pd.src_desc(), engine(), src_storage.data_ptr())}, pd.src_desc());
      const Buffer diff_weights = buffer(pd.diff_weights_desc());
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, src.mem}, {DNNL_ARG_DIFF_DST, diff_dst.mem}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights.mem}};
      if (has_bias) {
        grad_bias = at::empty({weight.size(0)}, weight.options());
        args.emplace(DNNL_ARG_DIFF_BIAS, memory(plan->user_bias, engine(), grad_bias.data_ptr()));
      }
      run(plan->backward_weights, pd, std::move(args));
      grad_weight = at::empty(weight.sizes(), weight.options());
      plan->grad_weights_out.into(diff_weights, user_buffer(grad_weight, plan->user_weights));
    }
    stream().wait();
    return {grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The geometry of a convolution oneDNN can take: square kernel 1 or 3, equal strides, equal zero padding,
// no dilation or groups; or nothing.
template <class Options>
std::optional<Geometry> geometry_of(const Options& o) {
  const int64_t k = (*o.kernel_size())[0], stride = (*o.stride())[0];
  if ((k != 1 && k != 3) || (*o.kernel_size())[1] != k || (*o.stride())[1] != stride || stride < 1 ||
      (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 || o.groups() != 1) {
    return std::nullopt;
  }
#if TORCH_VERSION_MAJOR >= 2  // LibTorch 2 has std::variant options, 1.13 its own c10::variant
  using std::get_if, std::holds_alternative;
#else
  using c10::get_if, c10::holds_alternative;
#endif
  const auto* padding = get_if<torch::ExpandingArray<2>>(&o.padding());
  if (padding == nullptr || (**padding)[0] != (**padding)[1] || (**padding)[0] < 0 ||
      !holds_alternative<torch::enumtype::kZeros>(o.padding_mode())) {
    return std::nullopt;
  }
  return Geometry{k, stride, (**padding)[0]};
}

// The mode this call takes, or nothing (LibTorch's convolution).
std::optional<Mode> onednn_mode(const torch::nn::Conv2dImpl& conv, const at::Tensor& x, const Geometry& g) {
  if (!x.device().is_cpu() || x.layout() != at::kStrided || x.dim() != 4 || x.numel() == 0) return std::nullopt;
  if (conv.weight.scalar_type() != at::kFloat || (conv.bias.defined() && conv.bias.scalar_type() != at::kFloat)) {
    return std::nullopt;
  }
  Mode mode;
  if (!at::autocast::is_cpu_enabled()) {
    // Winograd only where it has kernels; other float32 convolutions stay LibTorch's bit for bit.
    if (x.scalar_type() != at::kFloat || !g.winograd_shape()) return std::nullopt;
    mode = Mode::kWinogradF32;
  } else {
    if (at::autocast::get_autocast_cpu_dtype() != at::kBFloat16) return std::nullopt;
    if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return std::nullopt;
    mode = Mode::kDirectBf16;
  }
  if (plan_for(x.sizes(), conv.weight.size(0), conv.bias.defined(), mode, x.scalar_type(), g) == nullptr) {
    return std::nullopt;
  }
  return mode;
}

}  // namespace
#endif

torch::Tensor convolve(torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  if (!onednn_conv_enabled() || torch::jit::tracer::isTracing()) return conv.forward(x);
  const auto geometry = geometry_of(conv.options);
  if (!geometry) return conv.forward(x);
  if (const auto mode = onednn_mode(conv, x, *geometry)) {
    const auto& weight = conv.weight;
    const auto& bias = conv.bias;
    const bool grads = torch::GradMode::is_enabled() &&
                       (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
    // LibTorch 1.13's autograd Function takes no undefined inputs: no bias is an empty tensor there.
    if (grads) {
      return OnednnConvFunction::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()),
                                       static_cast<int64_t>(*mode), geometry->stride, geometry->padding);
    }
    auto plan = plan_for(x.sizes(), weight.size(0), bias.defined(), *mode, x.scalar_type(), *geometry);
    return run_forward(*plan, x.contiguous(), weight.contiguous(), bias, nullptr);
  }
#endif
  return conv.forward(x);
}

}  // namespace difftrain::model
