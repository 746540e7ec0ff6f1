#include "model/batched_matmul.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

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

#ifdef DIFFTRAIN_HAVE_ONEDNN
namespace {

// A float32 operand as (batch, rows, cols) that oneDNN reads in place: the last two
// dimensions row-major or column-major (a transposed view), batches densely packed.
// Anything else is copied to row-major first.
struct PlainOperand {
  at::Tensor tensor;  // 3-D
  bool column_major;
};

PlainOperand plain_operand(const at::Tensor& t) {
  auto x = t.reshape({-1, t.size(-2), t.size(-1)});  // a view where the leading dimensions merge
  const int64_t batch = x.size(0), rows = x.size(1), cols = x.size(2);
  const auto s = x.strides();
  const bool dense_batches = batch == 1 || s[0] == rows * cols;
  if (dense_batches && (cols == 1 || s[2] == 1) && (rows == 1 || s[1] == cols)) return {x, false};
  if (dense_batches && (rows == 1 || s[1] == 1) && (cols == 1 || s[2] == rows)) return {x, true};
  return {x.contiguous(), false};
}

dnnl::memory::desc describe(int64_t batch, int64_t rows, int64_t cols, bool column_major) {
  const dnnl::memory::dims strides =
      column_major ? dnnl::memory::dims{rows * cols, 1, rows} : dnnl::memory::dims{rows * cols, cols, 1};
  return dnnl::memory::desc({batch, rows, cols}, dnnl::memory::data_type::f32, strides);
}

// (batch, M, K) @ (batch, K, N) -> (batch, M, N), one oneDNN primitive per shape and
// layout, created once per thread (creation costs far more than execution).
at::Tensor onednn_product(const PlainOperand& a, const PlainOperand& b, float scale) {
  const int64_t batch = a.tensor.size(0), m = a.tensor.size(1), k = a.tensor.size(2), n = b.tensor.size(2);
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool, int, float>;
  thread_local dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  thread_local dnnl::stream stream(engine);
  thread_local std::map<Key, dnnl::matmul> primitives;
  const Key key{batch, m, k, n, a.column_major, b.column_major, at::get_num_threads(), scale};
  auto found = primitives.find(key);
  if (found == primitives.end()) {
    if (primitives.size() >= 512) primitives.clear();  // shapes churn only in unusual callers
    const auto desc = dnnl::matmul::desc(describe(batch, m, k, a.column_major), describe(batch, k, n, b.column_major),
                                         describe(batch, m, n, false));
    dnnl::primitive_attr attributes;
    if (scale != 1.0f) attributes.set_output_scales(0, {scale});
    found = primitives.emplace(key, dnnl::matmul(dnnl::matmul::primitive_desc(desc, attributes, engine))).first;
  }
  auto out = at::empty({batch, m, n}, a.tensor.options());
  dnnl::memory a_memory(describe(batch, m, k, a.column_major), engine, a.tensor.data_ptr());
  dnnl::memory b_memory(describe(batch, k, n, b.column_major), engine, b.tensor.data_ptr());
  dnnl::memory out_memory(describe(batch, m, n, false), engine, out.data_ptr());
  found->second.execute(stream, {{DNNL_ARG_SRC, a_memory}, {DNNL_ARG_WEIGHTS, b_memory}, {DNNL_ARG_DST, out_memory}});
  stream.wait();
  return out;
}

at::Tensor product(const at::Tensor& a, const at::Tensor& b, float scale) {
  auto sizes = a.sizes().vec();
  sizes.back() = b.size(-1);
  return onednn_product(plain_operand(a), plain_operand(b), scale).view(sizes);
}

bool takes_onednn_path(const at::Tensor& a, const at::Tensor& b) {
  if (!onednn_matmul_enabled() || torch::jit::tracer::isTracing() || at::autocast::is_cpu_enabled()) return false;
  if (!a.device().is_cpu() || !b.device().is_cpu() || a.layout() != at::kStrided || b.layout() != at::kStrided) {
    return false;
  }
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
  if (a.dim() < 3 || a.dim() != b.dim() || a.size(-1) != b.size(-2) || a.numel() == 0 || b.numel() == 0) return false;
  for (int64_t d = 0; d + 2 < a.dim(); ++d) {
    if (a.size(d) != b.size(d)) return false;  // broadcasting: torch::matmul's job
  }
  return true;
}

// C = s A·B; dA = s dC·Bᵀ, dB = s Aᵀ·dC, through batched_matmul again (transposed views are
// read in place).
struct BatchedMatmulFunction : torch::autograd::Function<BatchedMatmulFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            double scale) {
    ctx->save_for_backward({a, b});
    ctx->saved_data["scale"] = scale;
    return product(a, b, static_cast<float>(scale));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto& b = saved[1];
    const double scale = ctx->saved_data["scale"].toDouble();
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) grad_a = batched_matmul(grads[0], b.transpose(-1, -2), scale);
    if (ctx->needs_input_grad(1)) grad_b = batched_matmul(a.transpose(-1, -2), grads[0], scale);
    return {grad_a, grad_b, at::Tensor()};
  }
};

}  // namespace
#endif

at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b, double scale) {
#ifdef DIFFTRAIN_HAVE_ONEDNN
  if (takes_onednn_path(a, b)) {
    if ((a.requires_grad() || b.requires_grad()) && torch::GradMode::is_enabled()) {
      return BatchedMatmulFunction::apply(a, b, scale);
    }
    return product(a, b, static_cast<float>(scale));
  }
#endif
  return scale == 1.0 ? torch::matmul(a, b) : torch::matmul(a, b) * scale;
}

}  // namespace difftrain::model
