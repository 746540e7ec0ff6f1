// trainer/fused_adamw: the one-pass AdamW against LibTorch's torch::optim::AdamW
// (an independent implementation of the same update): equal to float32 rounding
// over many steps with weight decay and a learning-rate change, and checkpoints
// interchangeable both ways.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "trainer/fused_adamw.h"

namespace {

std::vector<torch::Tensor> make_params(int64_t seed) {
  torch::manual_seed(seed);
  // Odd sizes: the vector loop's remainder is exercised.
  return {torch::randn({37, 5}).requires_grad_(), torch::randn({1001}).requires_grad_(),
          torch::randn({3}).requires_grad_()};
}

torch::optim::AdamWOptions options() { return torch::optim::AdamWOptions(3e-3).betas({0.9, 0.99}).weight_decay(0.05); }

void fill_gradients(std::vector<torch::Tensor>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) {
    auto gen = torch::randn(params[i].sizes(), torch::TensorOptions().dtype(torch::kFloat32));
    params[i].mutable_grad() = gen * (1.0 + 0.1 * step + static_cast<double>(i));
  }
}

double max_relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = b[i].abs().max().item<double>() + 1e-12;
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() / scale);
  }
  return worst;
}

TEST(FusedAdamW, EqualsLibTorchAdamWToFloatRounding) {
  ASSERT_TRUE(difftrain::fused_adamw_enabled());
  auto fused_params = make_params(0), ref_params = make_params(0);
  difftrain::FusedAdamW fused(fused_params, options());
  torch::optim::AdamW reference(ref_params, options());
  for (int step = 0; step < 50; ++step) {
    torch::manual_seed(100 + step);
    fill_gradients(fused_params, step);
    torch::manual_seed(100 + step);
    fill_gradients(ref_params, step);
    if (step == 25) {  // the trainer's warm-up/cosine schedule changes lr every step
      for (auto* o : {static_cast<torch::optim::Optimizer*>(&fused), static_cast<torch::optim::Optimizer*>(&reference)}) {
        for (auto& group : o->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(1e-3);
      }
    }
    fused.step();
    reference.step();
  }
  // The parameters moved (the test is not vacuous) and agree to float32 rounding.
  auto initial = make_params(0);
  EXPECT_GT(max_relative_difference(ref_params, initial), 1e-2);
  EXPECT_LT(max_relative_difference(fused_params, ref_params), 1e-5);
}

TEST(FusedAdamW, CheckpointsAreInterchangeableWithLibTorchAdamW) {
  auto a_params = make_params(1), b_params = make_params(1);
  difftrain::FusedAdamW fused(a_params, options());
  for (int step = 0; step < 5; ++step) {
    torch::manual_seed(step);
    fill_gradients(a_params, step);
    fused.step();
  }
  // Fused -> LibTorch: the moments and step count carry over.
  std::stringstream saved;
  {
    torch::serialize::OutputArchive archive;
    fused.save(archive);
    archive.save_to(saved);
  }
  for (size_t i = 0; i < a_params.size(); ++i) b_params[i].detach().copy_(a_params[i].detach());
  torch::optim::AdamW reference(b_params, options());
  {
    torch::serialize::InputArchive archive;
    archive.load_from(saved);
    reference.load(archive);
  }
  torch::manual_seed(99);
  fill_gradients(a_params, 5);
  torch::manual_seed(99);
  fill_gradients(b_params, 5);
  fused.step();
  reference.step();
  EXPECT_LT(max_relative_difference(a_params, b_params), 1e-5);
  // LibTorch -> fused.
  std::stringstream saved_back;
  {
    torch::serialize::OutputArchive archive;
    reference.save(archive);
    archive.save_to(saved_back);
  }
  auto c_params = make_params(2);
  for (size_t i = 0; i < c_params.size(); ++i) c_params[i].detach().copy_(b_params[i].detach());
  difftrain::FusedAdamW resumed(c_params, options());
  {
    torch::serialize::InputArchive archive;
    archive.load_from(saved_back);
    resumed.load(archive);
  }
  torch::manual_seed(7);
  fill_gradients(c_params, 6);
  torch::manual_seed(7);
  fill_gradients(b_params, 6);
  resumed.step();
  reference.step();
  EXPECT_LT(max_relative_difference(c_params, b_params), 1e-5);
  const auto& state = static_cast<const torch::optim::AdamWParamState&>(
      *resumed.state().at(c10::guts::to_string(c_params[0].unsafeGetTensorImpl())));
  EXPECT_EQ(state.step(), 7);
}

}  // namespace
