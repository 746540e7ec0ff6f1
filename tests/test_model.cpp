#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/tokenizer.h"
#include "model/unet.h"
#include "trainer/batch_tensors.h"

namespace dm = difftrain::model;

namespace {

dm::UNetOptions tiny_options() {
  dm::UNetOptions o;
  o.image_size = 8;
  o.base_channels = 8;
  o.channel_mults = {1, 2};
  o.attention_resolutions = {4};
  o.attention_heads = 2;
  o.norm_groups = 4;
  o.text = {16, 16, 1, 2};
  return o;
}

// Gives the zero-initialised output layers weights, so the output depends on every parameter.
void perturb(dm::UNet& net) {
  torch::NoGradGuard g;
  for (auto& p : net->parameters()) p.add_(torch::randn_like(p) * 0.05);
}

}  // namespace

TEST(Tokenizer, BytesShiftedByOneAndPadded) {
  auto ids = dm::tokenize("ab", 4);
  EXPECT_EQ(ids, (std::vector<int64_t>{'a' + 1, 'b' + 1, 0, 0}));
  EXPECT_EQ(dm::tokenize("abcdef", 3).size(), 3u);
  EXPECT_EQ(dm::tokenize("\xff", 1)[0], 256);
}

TEST(UNet, OutputHasTheInputShapeAndStartsAtZero) {
  torch::manual_seed(0);
  dm::UNet net(tiny_options());
  auto x = torch::randn({3, 3, 8, 8});
  auto t = torch::tensor({0, 500, 999}, torch::kInt64);
  auto tokens = difftrain::tokenize_batch({"a red circle", "", "a blue square"}, 16);
  auto out = net->forward(x, t, tokens);
  EXPECT_EQ(out.sizes(), x.sizes());
  // conv_out is zero-initialised (guided-diffusion's zero_module), so the untrained net predicts 0.
  EXPECT_EQ(out.abs().max().item<double>(), 0.0);
}

TEST(UNet, EveryParameterGetsAGradientAndTheCaptionMatters) {
  torch::manual_seed(0);
  dm::UNet net(tiny_options());
  perturb(net);
  auto x = torch::randn({2, 3, 8, 8});
  auto t = torch::tensor({10, 10}, torch::kInt64);
  auto red = difftrain::tokenize_batch({"a red circle", "a red circle"}, 16);
  auto blue = difftrain::tokenize_batch({"a blue circle", "a blue circle"}, 16);
  auto out_red = net->forward(x, t, red);
  EXPECT_GT((out_red - net->forward(x, t, blue)).abs().max().item<double>(), 1e-4);
  out_red.pow(2).mean().backward();
  for (const auto& item : net->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    if (item.key().find("token_embedding") != std::string::npos) continue;  // unused bytes get zero
    EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0) << item.key();
  }
}

TEST(UNet, NullConditionIsFiniteAndTimestepMatters) {
  torch::manual_seed(0);
  dm::UNet net(tiny_options());
  perturb(net);
  auto x = torch::randn({1, 3, 8, 8});
  auto null_tokens = torch::zeros({1, 16}, torch::kInt64);
  auto a = net->forward(x, torch::tensor({1}, torch::kInt64), null_tokens);
  auto b = net->forward(x, torch::tensor({900}, torch::kInt64), null_tokens);
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-4);
}

TEST(BatchTensors, ImagesRoundTripThroughTheModelRange) {
  std::vector<uint8_t> hwc = {0, 128, 255, 10, 20, 30};  // (1, 1, 2, 3)
  auto t = difftrain::images_to_tensor(hwc, 1, 1, 2, 3);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{1, 3, 1, 2}));
  EXPECT_NEAR(t[0][0][0][0].item<double>(), -1.0, 1e-6);
  EXPECT_NEAR(t[0][2][0][0].item<double>(), 1.0, 1e-6);
  EXPECT_EQ(difftrain::tensor_to_images(t), hwc);
}
