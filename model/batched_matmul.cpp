#include "model/batched_matmul.h"

#include "model/attention_softmax.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef DIFFTRAIN_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

namespace difftrain::model {

bool onednn_matmul_enabled() {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  static const bool enabled = [] {
    const char* value = std::getenv("DIFFTRAIN_ONEDNN_MATMUL");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
#else
  return false;
#endif
}

namespace {

// torch::matmul's answer to the same request (the path where oneDNN is not taken).
at::Tensor torch_matmul(const at::Tensor& a, const at::Tensor& b, double scale, const MatmulOutput& output) {
  auto out = scale == 1.0 ? torch::matmul(a, b) : torch::matmul(a, b) * scale;
  return output.dtype ? out.to(*output.dtype) : out;
}

}  // namespace

#ifdef DIFFTRAIN_HAVE_ONEDNN
namespace {

using Type = dnnl::memory::data_type;

Type dnnl_type(at::ScalarType t) { return t == at::kBFloat16 ? Type::bf16 : Type::f32; }

// A matrix operand oneDNN reads in place: rows or columns packed (a transposed view), any
// positive batch strides. Anything else (a slice of rows, an expanded batch) is copied first.
at::Tensor readable(const at::Tensor& t) {
  const int64_t d = t.dim();
  const bool rows_packed = t.size(d - 1) == 1 || t.stride(d - 1) == 1;
  const bool columns_packed = t.size(d - 2) == 1 || t.stride(d - 2) == 1;
  bool batches_ok = true;
  for (int64_t i = 0; i + 2 < d; ++i) batches_ok = batches_ok && (t.size(i) == 1 || t.stride(i) > 0);
  if (batches_ok && (rows_packed || columns_packed)) return t;
  return t.contiguous();
}

dnnl::memory::desc describe(const at::Tensor& t) {
  return dnnl::memory::desc(dnnl::memory::dims(t.sizes().begin(), t.sizes().end()), dnnl_type(t.scalar_type()),
                            dnnl::memory::dims(t.strides().begin(), t.strides().end()));
}

// out = scale · a @ b, into `out` (any layout with packed rows). One oneDNN primitive per
// shape, layout, type and scale, created once per thread (creation costs far more than execution).
void product_into(const at::Tensor& out, const at::Tensor& a_in, const at::Tensor& b_in, float scale) {
  const at::Tensor a = readable(a_in), b = readable(b_in);
  std::vector<int64_t> key;
  for (const at::Tensor* t : {&a, &b, &out}) {
    key.push_back(static_cast<int64_t>(t->scalar_type()));
    key.insert(key.end(), t->sizes().begin(), t->sizes().end());
    key.insert(key.end(), t->strides().begin(), t->strides().end());
  }
  int32_t scale_bits;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  key.push_back(scale_bits);
  key.push_back(at::get_num_threads());
  thread_local dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  thread_local dnnl::stream stream(engine);
  thread_local std::map<std::vector<int64_t>, dnnl::matmul> primitives;
  auto found = primitives.find(key);
  if (found == primitives.end()) {
    if (primitives.size() >= 512) primitives.clear();  // shapes churn only in unusual callers
    dnnl::primitive_attr attributes;
    if (scale != 1.0f) attributes.set_output_scales(0, {scale});
    const auto desc = dnnl::matmul::desc(describe(a), describe(b), describe(out));
    found = primitives.emplace(key, dnnl::matmul(dnnl::matmul::primitive_desc(desc, attributes, engine))).first;
  }
  dnnl::memory a_memory(describe(a), engine, a.data_ptr());
  dnnl::memory b_memory(describe(b), engine, b.data_ptr());
  dnnl::memory out_memory(describe(out), engine, out.data_ptr());
  found->second.execute(stream, {{DNNL_ARG_SRC, a_memory}, {DNNL_ARG_WEIGHTS, b_memory}, {DNNL_ARG_DST, out_memory}});
  stream.wait();
}

std::vector<int64_t> product_sizes(const at::Tensor& a, const at::Tensor& b) {
  auto sizes = a.sizes().vec();
  sizes.back() = b.size(-1);
  return sizes;
}

// A new tensor of `sizes` laid out as `like` where that is a dense permutation with packed rows
// (a gradient in its operand's layout: no copy where autograd's view functions reshape it), else contiguous.
at::Tensor empty_like_layout(const at::Tensor& like, at::ScalarType type) {
  if (like.is_non_overlapping_and_dense() && like.stride(-1) == 1) return at::empty_like(like, like.options().dtype(type));
  return at::empty(like.sizes(), like.options().dtype(type));
}

at::Tensor forward_product(const at::Tensor& a, const at::Tensor& b, float scale, const MatmulOutput& output) {
  const auto type = output.dtype.value_or(a.scalar_type());
  const auto sizes = product_sizes(a, b);
  at::Tensor out;
  if (output.heads_interleaved && sizes.size() == 4) {
    out = at::empty({sizes[0], sizes[2], sizes[1], sizes[3]}, a.options().dtype(type)).transpose(1, 2);
  } else {
    out = at::empty(sizes, a.options().dtype(type));
  }
  product_into(out, a, b, scale);
  return out;
}

// The gradient of the operand x of a product, given how to compute it (g = f(x-shaped)) and how to
// compute its transpose: where x is a transposed view (packed columns) the transpose is computed into
// x's underlying layout, so the gradient comes back as the same kind of view.
template <class Direct, class Transposed>
at::Tensor operand_gradient(const at::Tensor& x, Direct direct, Transposed transposed) {
  const bool columns_packed = x.stride(-1) != 1 && x.stride(-2) == 1;
  if (columns_packed) {
    const auto xt = x.transpose(-1, -2);
    auto gt = empty_like_layout(xt, x.scalar_type());
    transposed(gt);
    return gt.transpose(-1, -2);
  }
  auto g = empty_like_layout(x, x.scalar_type());
  direct(g);
  return g;
}

// C = s A·B; dA = s dC·Bᵀ (or dAᵀ = s B·dCᵀ), dB = s Aᵀ·dC (or dBᵀ = s dCᵀ·A).
struct BatchedMatmulFunction : torch::autograd::Function<BatchedMatmulFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            double scale, int64_t out_type, bool heads_interleaved) {
    ctx->save_for_backward({a, b});
    ctx->saved_data["scale"] = scale;
    MatmulOutput output;
    output.dtype = static_cast<at::ScalarType>(out_type);
    output.heads_interleaved = heads_interleaved;
    return forward_product(a, b, static_cast<float>(scale), output);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto& b = saved[1];
    const auto s = static_cast<float>(ctx->saved_data["scale"].toDouble());
    // A float32 upstream gradient of a bf16 product is rounded to bf16, as autocast's cast back would.
    const at::Tensor g = grads[0].to(a.scalar_type());
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) {
      grad_a = operand_gradient(
          a, [&](const at::Tensor& out) { product_into(out, g, b.transpose(-1, -2), s); },
          [&](const at::Tensor& out_t) { product_into(out_t, b, g.transpose(-1, -2), s); });
    }
    if (ctx->needs_input_grad(1)) {
      grad_b = operand_gradient(
          b, [&](const at::Tensor& out) { product_into(out, a.transpose(-1, -2), g, s); },
          [&](const at::Tensor& out_t) { product_into(out_t, g.transpose(-1, -2), a, s); });
    }
    return {grad_a, grad_b, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool takes_onednn_path(const at::Tensor& a, const at::Tensor& b, at::ScalarType operand_type,
                       const MatmulOutput& output) {
  if (!onednn_matmul_enabled() || torch::jit::tracer::isTracing()) return false;
  if (!a.device().is_cpu() || !b.device().is_cpu() || a.layout() != at::kStrided || b.layout() != at::kStrided) {
    return false;
  }
  if (operand_type != at::kFloat && operand_type != at::kBFloat16) return false;
  if (a.scalar_type() != operand_type || b.scalar_type() != operand_type) return false;
  if (output.dtype && *output.dtype != operand_type && *output.dtype != at::kFloat) return false;
  if (a.dim() < 3 || a.dim() != b.dim() || a.size(-1) != b.size(-2) || a.numel() == 0 || b.numel() == 0) return false;
  for (int64_t d = 0; d + 2 < a.dim(); ++d) {
    if (a.size(d) != b.size(d)) return false;  // broadcasting: torch::matmul's job
  }
  return true;
}

// S = scale q kᵀ (float32 scratch), P = softmax(S) in bf16, O = P v heads-interleaved; returns {O, P}.
std::pair<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& valid, float scale) {
  const int64_t B = q.size(0), heads = q.size(1), Nq = q.size(2), Nk = k.size(2);
  auto scores = at::empty({B, heads, Nq, Nk}, q.options().dtype(at::kFloat));
  product_into(scores, q, k.transpose(-1, -2), scale);
  auto weights = at::empty({B, heads, Nq, Nk}, q.options());
  softmax_rows_to_bf16(scores.data_ptr<float>(), reinterpret_cast<uint16_t*>(weights.data_ptr()), B * heads * Nq, Nk,
                       valid.numel() > 0 ? valid.data_ptr<uint8_t>() : nullptr, heads * Nq);
  scores.reset();  // its memory goes back before the output is allocated
  auto out = at::empty({B, Nq, heads, v.size(3)}, q.options()).transpose(1, 2);
  product_into(out, weights, v, 1.0f);
  return {out, weights};
}

// dP = dO vᵀ (float32), dv = Pᵀ dO, dS = P ⊙ (dP − rowsum(P ⊙ dP)) (bf16), dq = s dS k, dk = s dSᵀ q.
struct FusedAttentionFunction : torch::autograd::Function<FusedAttentionFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& valid, double scale) {
    auto [out, weights] = attention_forward(q, k, v, valid, static_cast<float>(scale));
    ctx->save_for_backward({q, k, v, weights});
    ctx->saved_data["scale"] = scale;
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &weights = saved[3];
    const auto s = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const at::Tensor g = grads[0].to(q.scalar_type());
    auto grad_v = operand_gradient(
        v, [&](const at::Tensor& out) { product_into(out, weights.transpose(-1, -2), g, 1.0f); },
        [&](const at::Tensor& out_t) { product_into(out_t, g.transpose(-1, -2), weights, 1.0f); });
    auto dweights = at::empty(weights.sizes(), weights.options().dtype(at::kFloat));
    product_into(dweights, g, v.transpose(-1, -2), 1.0f);
    auto dscores = at::empty(weights.sizes(), weights.options());
    softmax_backward_rows_bf16(reinterpret_cast<const uint16_t*>(weights.data_ptr()), dweights.data_ptr<float>(),
                               reinterpret_cast<uint16_t*>(dscores.data_ptr()), weights.numel() / weights.size(-1),
                               weights.size(-1));
    dweights.reset();
    auto grad_q = operand_gradient(
        q, [&](const at::Tensor& out) { product_into(out, dscores, k, s); },
        [&](const at::Tensor& out_t) { product_into(out_t, k.transpose(-1, -2), dscores.transpose(-1, -2), s); });
    auto grad_k = operand_gradient(
        k, [&](const at::Tensor& out) { product_into(out, dscores.transpose(-1, -2), q, s); },
        [&](const at::Tensor& out_t) { product_into(out_t, q.transpose(-1, -2), dscores, s); });
    return {grad_q, grad_k, grad_v, at::Tensor(), at::Tensor()};
  }
};

std::atomic<int> g_fused_attention{-1};  // -1: not read from the environment yet

}  // namespace
#endif

bool fused_attention_enabled() {
  int value = g_fused_attention.load();
  if (value < 0) {
    const char* env = std::getenv("DIFFTRAIN_FUSED_ATTENTION");
    if (env != nullptr && std::string(env) != "0" && std::string(env) != "1")
      throw std::runtime_error(std::string("DIFFTRAIN_FUSED_ATTENTION=") + env +
                               ": expected 1 (the default: fused bf16 attention softmax) or 0 (the eager ops)");
    value = env && std::string(env) == "0" ? 0 : 1;
    g_fused_attention.store(value);
  }
  return value == 1;
}

void set_fused_attention_enabled(bool enabled) { g_fused_attention.store(enabled ? 1 : 0); }

bool fused_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  if (!fused_attention_enabled() || q.scalar_type() != at::kBFloat16 || v.scalar_type() != at::kBFloat16) return false;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.sizes() != v.sizes() || q.size(3) != k.size(3)) return false;
  if (q.size(0) != k.size(0) || q.size(1) != k.size(1)) return false;
  return takes_onednn_path(q, k.transpose(-1, -2), at::kBFloat16, {}) && v.device().is_cpu() &&
         v.layout() == at::kStrided;
#else
  (void)q, (void)k, (void)v;
  return false;
#endif
}

at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_valid,
                           double scale) {
  TORCH_CHECK(fused_attention_applies(q, k, v), "fused_attention: q, k, v must be bf16 CPU (B, heads, N, d) tensors "
              "on the oneDNN path; got ", q.sizes(), " ", q.scalar_type());
#ifdef DIFFTRAIN_HAVE_ONEDNN
  // (B, Nk) bytes, or empty for no mask (autograd functions take defined tensors)
  auto valid = at::empty({0}, q.options().dtype(at::kByte));
  if (key_valid.defined()) {
    TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(0) == q.size(0) && key_valid.size(1) == k.size(2),
                "fused_attention: key_valid must be (B, Nk) = (", q.size(0), ", ", k.size(2), "), got ",
                key_valid.sizes());
    valid = key_valid.to(at::kBool).contiguous().view(at::kByte);
  }
  if ((q.requires_grad() || k.requires_grad() || v.requires_grad()) && torch::GradMode::is_enabled()) {
    return FusedAttentionFunction::apply(q, k, v, valid, scale);
  }
  return attention_forward(q, k, v, valid, static_cast<float>(scale)).first;
#else
  (void)key_valid, (void)scale;
  return {};
#endif
}

at::Tensor batched_matmul(const at::Tensor& a_in, const at::Tensor& b_in, double scale, MatmulOutput output) {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  // Under bf16 autocast torch::matmul casts float32 operands to bf16: so does this path.
  at::Tensor a = a_in, b = b_in;
  if (at::autocast::is_cpu_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16) {
    if (a.scalar_type() == at::kFloat) a = a.to(at::kBFloat16);
    if (b.scalar_type() == at::kFloat) b = b.to(at::kBFloat16);
  }
  const auto operand_type = a.scalar_type();
  if (takes_onednn_path(a, b, operand_type, output)) {
    if ((a.requires_grad() || b.requires_grad()) && torch::GradMode::is_enabled()) {
      return BatchedMatmulFunction::apply(a, b, scale, static_cast<int64_t>(output.dtype.value_or(operand_type)),
                                          output.heads_interleaved);
    }
    return forward_product(a, b, static_cast<float>(scale), output);
  }
#endif
  return torch_matmul(a_in, b_in, scale, output);
}

}  // namespace difftrain::model
