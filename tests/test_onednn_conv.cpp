// model/onednn_conv: oneDNN's Winograd F(4×4, 3×3) convolution against LibTorch's own
// torch::conv2d (an independent implementation: oneDNN's direct algorithm through ATen),
// output and all three gradients, at the UNet's shapes; deterministic; the bf16 autocast
// mode against a float64 convolution of the bf16-rounded operands (and eager autocast's
// error); and the paths that must not take it (other kernels and strides, fp16 autocast)
// give torch::conv2d's bits.
#include <gtest/gtest.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <cstdio>

#include "model/onednn_conv.h"

namespace {
using difftrain::model::convolve;

struct Result {
  torch::Tensor y, grad_x, grad_weight, grad_bias;
};

Result run(torch::nn::Conv2d& conv, const torch::Tensor& x_value, const torch::Tensor& upstream, bool winograd) {
  auto x = x_value.clone().requires_grad_();
  conv->zero_grad();
  auto y = winograd ? convolve(*conv, x) : torch::conv2d(x, conv->weight, conv->bias, 1, 1);
  (y * upstream).sum().backward();
  return {y.detach(), x.grad(), conv->weight.grad().clone(),
          conv->bias.defined() ? conv->bias.grad().clone() : torch::Tensor()};
}

double relative_error(const torch::Tensor& a, const torch::Tensor& reference) {
  return ((a - reference).abs().max() / reference.abs().max()).item<double>();
}

TEST(OnednnConv, WinogradMatchesTorchConv2dForwardAndBackward) {
  if (!difftrain::model::onednn_conv_enabled()) GTEST_SKIP() << "built without oneDNN or DIFFTRAIN_CONV=libtorch";
  torch::manual_seed(0);
  struct Shape {
    int64_t n, in, out, side;
    bool bias;
  };
  // The UNet's: 64 and 128 channels at 32, 16 and 8 px, a concatenated skip (192 in), a
  // size not a multiple of the 4×4 tile (10), no bias, the RGB input and output layers.
  for (const Shape s : {Shape{4, 64, 64, 32, true}, Shape{3, 192, 64, 16, true}, Shape{2, 128, 128, 8, true},
                        Shape{2, 32, 48, 10, true}, Shape{2, 16, 16, 12, false}, Shape{2, 3, 32, 16, true},
                        Shape{2, 32, 3, 16, true}}) {
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(s.in, s.out, 3).padding(1).bias(s.bias));
    auto x = torch::randn({s.n, s.in, s.side, s.side});
    auto upstream = torch::randn({s.n, s.out, s.side, s.side});
    const Result reference = run(conv, x, upstream, false);
    const Result winograd = run(conv, x, upstream, true);
    const Result again = run(conv, x, upstream, true);
    SCOPED_TRACE("in " + std::to_string(s.in) + " out " + std::to_string(s.out) + " side " + std::to_string(s.side));
    std::printf("in %lld out %lld side %lld: relative difference y %.2g dx %.2g dw %.2g\n", (long long)s.in,
                (long long)s.out, (long long)s.side, relative_error(winograd.y, reference.y),
                relative_error(winograd.grad_x, reference.grad_x),
                relative_error(winograd.grad_weight, reference.grad_weight));
    // Float32 rounding of a different summation: measured 6e-7..3e-6 relative to the largest value.
    EXPECT_LT(relative_error(winograd.y, reference.y), 2e-5);
    EXPECT_LT(relative_error(winograd.grad_x, reference.grad_x), 2e-5);
    EXPECT_LT(relative_error(winograd.grad_weight, reference.grad_weight), 2e-5);
    if (s.bias) EXPECT_LT(relative_error(winograd.grad_bias, reference.grad_bias), 2e-5);
    // Not the same bits as direct (else this would test nothing), the same bits run to run.
    EXPECT_FALSE(torch::equal(winograd.y, reference.y));
    EXPECT_TRUE(torch::equal(winograd.y, again.y));
    EXPECT_TRUE(torch::equal(winograd.grad_x, again.grad_x));
    EXPECT_TRUE(torch::equal(winograd.grad_weight, again.grad_weight));
  }
}

TEST(OnednnConv, NoGradForwardEqualsTheAutogradOne) {
  torch::manual_seed(1);
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3).padding(1));
  auto x = torch::randn({2, 32, 16, 16});
  auto with_grad = convolve(*conv, x).detach();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(convolve(*conv, x), with_grad));
  // A non-contiguous input (a channels-last view) computes the same.
  EXPECT_TRUE(torch::equal(convolve(*conv, x.contiguous(at::MemoryFormat::ChannelsLast)), with_grad));
}

TEST(OnednnConv, OtherConvolutionsAndFloat16AutocastAreTorchConv2d) {
  torch::manual_seed(2);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 32, 16, 16});
  auto strided = torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3).stride(2).padding(1));
  EXPECT_TRUE(torch::equal(convolve(*strided, x), strided->forward(x)));
  auto one_by_one = torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 1));
  EXPECT_TRUE(torch::equal(convolve(*one_by_one, x), one_by_one->forward(x)));
  auto unpadded = torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3));
  EXPECT_TRUE(torch::equal(convolve(*unpadded, x), unpadded->forward(x)));
}

// bf16 autocast: y and dx are bf16-rounded in both eager autocast and here; dw and db are
// float32 here (eager rounds dw to bf16 before casting it back). The reference is float64
// on the bf16-rounded operands, with an upstream gradient that bf16 represents exactly.
struct Bf16Result {
  torch::Tensor y, grad_x, grad_weight, grad_bias;
};

Bf16Result run_bf16(torch::nn::Conv2d& conv, const torch::Tensor& x_value, const torch::Tensor& upstream, bool ours) {
  auto x = x_value.clone().requires_grad_();
  conv->zero_grad();
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  auto y = ours ? convolve(*conv, x) : conv->forward(x);
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  y.backward(upstream.to(y.scalar_type()));
  return {y.detach(), x.grad(), conv->weight.grad().clone(),
          conv->bias.defined() ? conv->bias.grad().clone() : torch::Tensor()};
}

TEST(OnednnConv, Bf16AutocastMatchesFloat64OfRoundedOperands) {
  if (!difftrain::model::onednn_conv_enabled()) GTEST_SKIP() << "built without oneDNN or DIFFTRAIN_CONV=libtorch";
  torch::manual_seed(3);
  struct Shape {
    int64_t n, in, out, side;
    bool bias;
    at::ScalarType x_type;  // autocast sees float32 activations (after a float32 norm) and bf16 ones
    int64_t kernel = 3, stride = 1;  // also the downsamplers (3×3, stride 2) and the 1×1 projections
  };
  for (const Shape s : {Shape{4, 64, 64, 32, true, at::kFloat}, Shape{3, 192, 64, 16, true, at::kBFloat16},
                        Shape{2, 128, 128, 8, true, at::kFloat}, Shape{2, 16, 16, 12, false, at::kFloat},
                        Shape{2, 3, 32, 16, true, at::kFloat}, Shape{2, 32, 3, 16, true, at::kBFloat16},
                        Shape{3, 64, 64, 32, true, at::kBFloat16, 3, 2}, Shape{2, 128, 128, 15, true, at::kFloat, 3, 2},
                        Shape{3, 192, 128, 16, true, at::kBFloat16, 1, 1}, Shape{2, 64, 32, 9, false, at::kFloat, 1, 1}}) {
    SCOPED_TRACE("in " + std::to_string(s.in) + " out " + std::to_string(s.out) + " side " + std::to_string(s.side) +
                 " kernel " + std::to_string(s.kernel) + " stride " + std::to_string(s.stride));
    const int64_t padding = s.kernel / 2, out_side = (s.side + 2 * padding - s.kernel) / s.stride + 1;
    auto conv = torch::nn::Conv2d(
        torch::nn::Conv2dOptions(s.in, s.out, s.kernel).stride(s.stride).padding(padding).bias(s.bias));
    auto x = torch::randn({s.n, s.in, s.side, s.side}).to(s.x_type);
    auto upstream = torch::randn({s.n, s.out, out_side, out_side}).to(at::kBFloat16).to(at::kFloat);
    // float64 reference on the operands as the bf16 kernels see them
    auto xr = x.to(at::kBFloat16).to(at::kDouble).requires_grad_();
    auto wr = conv->weight.detach().to(at::kBFloat16).to(at::kDouble).requires_grad_();
    torch::Tensor br;
    if (s.bias) br = conv->bias.detach().to(at::kDouble).requires_grad_();
    auto yr = torch::conv2d(xr, wr, br, s.stride, padding);
    yr.backward(upstream.to(at::kDouble));
    const Bf16Result ours = run_bf16(conv, x, upstream, true);
    const Bf16Result again = run_bf16(conv, x, upstream, true);
    const Bf16Result eager = run_bf16(conv, x, upstream, false);
    EXPECT_EQ(ours.y.scalar_type(), at::kBFloat16);
    EXPECT_EQ(ours.grad_x.scalar_type(), s.x_type);
    EXPECT_EQ(ours.grad_weight.scalar_type(), at::kFloat);
    auto err = [](const torch::Tensor& a, const torch::Tensor& r) {
      return ((a.to(at::kDouble) - r).abs().max() / r.abs().max()).item<double>();
    };
    std::printf("in %lld out %lld side %lld: relative error y %.2g (eager %.2g) dx %.2g (eager %.2g) dw %.2g "
                "(eager %.2g)\n", (long long)s.in, (long long)s.out, (long long)s.side, err(ours.y, yr),
                err(eager.y, yr), err(ours.grad_x, xr.grad()), err(eager.grad_x, xr.grad()),
                err(ours.grad_weight, wr.grad()), err(eager.grad_weight, wr.grad()));
    // bf16 rounding of the output and of the input gradient: half an ulp is 2^-9 relative.
    EXPECT_LT(err(ours.y, yr), 4e-3);
    EXPECT_LT(err(ours.grad_x, xr.grad()), 4e-3);
    // float32 accumulation of exact bf16 products for the weight and bias gradients
    EXPECT_LT(err(ours.grad_weight, wr.grad()), 2e-5);
    EXPECT_LT(err(ours.grad_weight, wr.grad()), err(eager.grad_weight, wr.grad()));
    if (s.bias) EXPECT_LT(err(ours.grad_bias, br.grad()), 2e-5);
    EXPECT_TRUE(torch::equal(ours.y, again.y));
    EXPECT_TRUE(torch::equal(ours.grad_x, again.grad_x));
    EXPECT_TRUE(torch::equal(ours.grad_weight, again.grad_weight));
  }
}

TEST(OnednnConv, Float16AutocastIsLibTorchs) {
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  try {
    at::autocast::set_autocast_cpu_dtype(at::kHalf);
  } catch (const c10::Error&) {
    GTEST_SKIP() << "this LibTorch's CPU autocast takes bf16 only (1.13)";
  }
  auto x = torch::randn({2, 32, 16, 16});
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3).padding(1));
  at::autocast::set_cpu_enabled(true);
  const auto ours = convolve(*conv, x);
  const auto eager = conv->forward(x);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  EXPECT_TRUE(torch::equal(ours, eager));
}

}  // namespace
