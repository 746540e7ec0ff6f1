// Activation checkpointing (model/activation_checkpoint.h) changes memory, not
// the numbers: a UNet with it gives the loss and gradients of one without.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <set>

#include "model/tokenizer.h"
#include "model/unet.h"
#include "trainer/batch_tensors.h"
#include "trainer/precision.h"

namespace dm = difftrain::model;

namespace {

// Dropout > 0 so the recompute must replay the forward's random draws; cross-attention on.
dm::UNetOptions options_with_dropout() {
  dm::UNetOptions o;
  o.image_size = 8;
  o.base_channels = 8;
  o.channel_mults = {1, 2};
  o.num_res_blocks = 2;
  o.attention_resolutions = {8, 4};
  o.attention_heads = 2;
  o.norm_groups = 4;
  o.dropout = 0.3;
  o.text = {16, 16, 1, 2};
  return o;
}

struct Step {
  torch::Tensor loss;
  std::vector<torch::Tensor> grads;  // one per parameter, in named_parameters() order
  torch::Tensor next_draw;           // the CPU RNG's next value after backward
  int64_t checkpoint_nodes = 0;
};

int64_t count_checkpoint_nodes(const torch::Tensor& root) {
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo{root.grad_fn().get()};
  int64_t n = 0;
  while (!todo.empty()) {
    auto* node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node).second) continue;
    if (node->name().find("CheckpointFunction") != std::string::npos) ++n;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function.get());
  }
  return n;
}

// One training step's forward and backward from a fixed RNG state.
Step train_step(dm::UNet& net, bool checkpoint, difftrain::Precision precision) {
  net->options.checkpoint_activations = checkpoint;
  net->zero_grad();
  torch::manual_seed(11);
  auto x = torch::randn({3, 3, 8, 8});
  auto target = torch::randn({3, 3, 8, 8});
  auto t = torch::tensor({5, 400, 900}, torch::kInt64);
  auto tokens = difftrain::tokenize_batch({"a red circle", "a blue square", ""}, 16);
  Step s;
  {
    difftrain::AutocastScope autocast(precision, torch::kCPU);
    s.loss = (net->forward(x, t, tokens).to(torch::kFloat32) - target).pow(2).mean();
  }
  s.checkpoint_nodes = count_checkpoint_nodes(s.loss);
  s.loss.backward();
  for (const auto& p : net->parameters()) s.grads.push_back(p.grad().clone());
  s.next_draw = torch::rand({1});
  return s;
}

dm::UNet perturbed_net(const dm::UNetOptions& o) {
  torch::manual_seed(0);
  dm::UNet net(o);
  torch::NoGradGuard g;  // non-zero output layers, so every parameter gets a gradient
  for (auto& p : net->parameters()) p.add_(torch::randn_like(p) * 0.05);
  return net;
}

// Largest |a - b| over every parameter's gradient, relative to the largest |a|:
// the gradients' scale in this step.
double max_relative_gradient_difference(const Step& a, const Step& b) {
  double diff = 0, scale = 0;
  for (size_t k = 0; k < a.grads.size(); ++k) {
    diff = std::max(diff, (a.grads[k] - b.grads[k]).abs().max().item<double>());
    scale = std::max(scale, a.grads[k].abs().max().item<double>());
  }
  return diff / scale;
}

const int64_t kBlocks = 2 * 2 + 2 + 2 * 3;  // down (levels x res blocks), middle, up (levels x (res blocks + 1))

}  // namespace

TEST(ActivationCheckpoint, SameLossAndGradientsAsWithoutInFp32) {
  auto net = perturbed_net(options_with_dropout());
  net->train();
  const Step plain = train_step(net, false, difftrain::Precision::kFp32);
  const Step recomputed = train_step(net, true, difftrain::Precision::kFp32);
  EXPECT_EQ(plain.checkpoint_nodes, 0);
  EXPECT_EQ(recomputed.checkpoint_nodes, kBlocks);  // every block, the middle ones included
  EXPECT_EQ(plain.loss.item<float>(), recomputed.loss.item<float>());  // the same forward, bitwise
  ASSERT_EQ(plain.grads.size(), recomputed.grads.size());
  for (size_t k = 0; k < plain.grads.size(); ++k) EXPECT_GT(plain.grads[k].abs().sum().item<double>(), 0.0) << k;
  // Not bitwise: the gradients of tensors several blocks use (embedding, caption
  // tokens, skips) are summed in another order when the blocks are recomputed.
  EXPECT_LE(max_relative_gradient_difference(plain, recomputed), 1e-6);
  // The recompute replays the forward's draws and then puts the RNG back: the
  // random stream after the step is the one a run without checkpointing sees.
  EXPECT_EQ(plain.next_draw.item<float>(), recomputed.next_draw.item<float>());
}

TEST(ActivationCheckpoint, SameLossAndGradientsAsWithoutUnderBf16Autocast) {
  auto net = perturbed_net(options_with_dropout());
  net->train();
  const Step plain = train_step(net, false, difftrain::Precision::kBf16);
  const Step recomputed = train_step(net, true, difftrain::Precision::kBf16);
  EXPECT_EQ(recomputed.checkpoint_nodes, kBlocks);
  EXPECT_EQ(plain.loss.item<float>(), recomputed.loss.item<float>());
  // bf16 rounds the differently ordered sums at ~4e-3 relative; a recompute
  // outside autocast would not even run (fp32 outputs, bf16 incoming gradients).
  EXPECT_LE(max_relative_gradient_difference(plain, recomputed), 1e-2);
  EXPECT_EQ(plain.next_draw.item<float>(), recomputed.next_draw.item<float>());
}

TEST(ActivationCheckpoint, OffInEvalModeAndWithoutGradMode) {
  auto net = perturbed_net(options_with_dropout());
  net->options.checkpoint_activations = true;
  auto x = torch::randn({1, 3, 8, 8});
  auto t = torch::tensor({5}, torch::kInt64);
  auto tokens = difftrain::tokenize_batch({"a red circle"}, 16);
  net->eval();
  EXPECT_EQ(count_checkpoint_nodes(net->forward(x, t, tokens).sum()), 0);
  net->train();
  EXPECT_EQ(count_checkpoint_nodes(net->forward(x, t, tokens).sum()), kBlocks);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(net->forward(x, t, tokens).requires_grad());
}
