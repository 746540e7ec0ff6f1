#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "model/tokenizer.h"
#include "model/batched_matmul.h"
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

namespace {

dm::UNetOptions precomputed_options(int64_t pooled_dim) {
  auto o = tiny_options();
  o.conditioning = dm::ConditioningSource::kPrecomputed;
  o.context_dim = 6;
  o.pooled_dim = pooled_dim;
  return o;
}

std::vector<uint16_t> half_bits(const torch::Tensor& values) {
  auto h = values.to(torch::kHalf).contiguous();
  const auto* p = reinterpret_cast<const uint16_t*>(h.data_ptr());
  return std::vector<uint16_t>(p, p + h.numel());
}

}  // namespace

TEST(Conditioning, DropoutReplacesStatesMaskAndPooledByTheNullCondition) {
  const int64_t B = 3, L = 4, D = 5, P = 2;
  difftrain::data::TextEmbeddingShape shape{L, D, P, true};
  torch::manual_seed(1);
  auto states = torch::randn({B, L, D}), pooled = torch::randn({B, P});
  auto null_states = torch::randn({1, L, D}), null_pooled = torch::randn({1, P});
  difftrain::TextEmbeddingBits batch{half_bits(states), {1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1}, half_bits(pooled)};
  difftrain::TextEmbeddingBits null{half_bits(null_states), {1, 0, 0, 0}, half_bits(null_pooled)};
  auto drop = torch::tensor({false, true, false});
  auto c = difftrain::precomputed_conditioning(batch, B, shape, null, drop);
  ASSERT_EQ(c.context.sizes(), (std::vector<int64_t>{B, L, D}));
  EXPECT_EQ(c.context.scalar_type(), torch::kFloat32);
  EXPECT_EQ(c.mask.scalar_type(), torch::kBool);
  // Kept samples: their own float16-rounded values; the dropped one: the null condition in all three fields.
  for (int64_t k : {0, 2}) {
    EXPECT_TRUE(c.context[k].equal(states[k].to(torch::kHalf).to(torch::kFloat32)));
    EXPECT_TRUE(c.pooled[k].equal(pooled[k].to(torch::kHalf).to(torch::kFloat32)));
  }
  EXPECT_TRUE(c.context[1].equal(null_states[0].to(torch::kHalf).to(torch::kFloat32)));
  EXPECT_TRUE(c.pooled[1].equal(null_pooled[0].to(torch::kHalf).to(torch::kFloat32)));
  EXPECT_TRUE(c.mask.equal(torch::tensor({true, true, false, false, true, false, false, false, true, true, true, true})
                               .view({B, L})));
  // Without pooled embeddings the Conditioning has none.
  shape.pooled_width = 0;
  batch.pooled.clear();
  null.pooled.clear();
  EXPECT_FALSE(difftrain::precomputed_conditioning(batch, B, shape, null, drop).pooled.defined());
}

TEST(Conditioning, MaskedKeysAreIgnoredAndAFullyMaskedRowAttendsToNothing) {
  torch::manual_seed(2);
  auto q = torch::randn({2, 2, 3, 4}), k = torch::randn({2, 2, 5, 4}), v = torch::randn({2, 2, 5, 4});
  auto valid = torch::tensor({true, true, false, true, false, false, false, false, false, false}).view({2, 5});
  auto out = dm::scaled_dot_product_attention(q, k, v, valid);
  auto k2 = k.clone(), v2 = v.clone();
  k2.select(2, 2).fill_(100), v2.select(2, 4).fill_(-100);
  EXPECT_TRUE(out.allclose(dm::scaled_dot_product_attention(q, k2, v2, valid)));
  EXPECT_FALSE(out[0].allclose(dm::scaled_dot_product_attention(q, k, v, torch::Tensor())[0]));
  EXPECT_EQ(out[1].abs().max().item<double>(), 0.0);  // no key: zeros, not NaN
}

TEST(Conditioning, PrecomputedUNetTakesContextAndPooledAndAFullyMaskedContextIsFinite) {
  torch::manual_seed(3);
  dm::UNet net(precomputed_options(4));
  perturb(net);
  EXPECT_FALSE(net->text_encoder);
  auto x = torch::randn({2, 3, 8, 8});
  auto t = torch::tensor({10, 10}, torch::kInt64);
  dm::Conditioning c{torch::randn({2, 7, 6}), torch::ones({2, 7}, torch::kBool), torch::randn({2, 4})};
  auto out = net->forward(x, t, c);
  EXPECT_EQ(out.sizes(), x.sizes());
  dm::Conditioning other_pooled{c.context, c.mask, torch::randn({2, 4})};
  EXPECT_GT((out - net->forward(x, t, other_pooled)).abs().max().item<double>(), 1e-4);
  // Fully masked: finite output and gradients, and the context's values no longer matter.
  dm::Conditioning none{c.context.clone().requires_grad_(true), torch::zeros({2, 7}, torch::kBool), c.pooled};
  auto masked = net->forward(x, t, none);
  EXPECT_TRUE(torch::isfinite(masked).all().item<bool>());
  masked.pow(2).sum().backward();
  for (const auto& p : net->parameters()) EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
  dm::Conditioning none2{torch::randn({2, 7, 6}) * 50, none.mask, c.pooled};
  EXPECT_TRUE(masked.detach().allclose(net->forward(x, t, none2)));
  // Caption tokens are refused: this UNet has no text encoder.
  EXPECT_THROW(net->forward(x, t, difftrain::tokenize_batch({"a", "b"}, 16)), c10::Error);
  // pooled_dim 0: no pooled input, none may be given.
  dm::UNet plain(precomputed_options(0));
  EXPECT_FALSE(plain->text_to_embedding);
  EXPECT_EQ(plain->forward(x, t, dm::Conditioning{c.context, c.mask, torch::Tensor()}).sizes(), x.sizes());
  EXPECT_THROW(plain->forward(x, t, c), c10::Error);
}


// The builtin model's numerics are those of the rule before precomputed conditioning
// (masked keys at -1e4, no guard): with a real key in every row, values and gradients
// are bit for bit the same, in fp32 and from bf16 operands (float32 scores, bf16 weights).
TEST(Conditioning, MaskingMatchesTheEarlierLargeNegativeRuleBitForBit) {
  auto earlier = [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& valid) {
    // The same matmuls as the attention (float32 scores, heads-interleaved output): only the masking rule differs.
    auto scores = dm::batched_matmul(q, k.transpose(-1, -2), 1.0 / std::sqrt(static_cast<double>(q.size(-1))),
                                     {torch::kFloat32});
    scores = scores.masked_fill(valid.logical_not().unsqueeze(1).unsqueeze(1), -1e4);
    return dm::batched_matmul(torch::softmax(scores, -1).to(v.scalar_type()), v, 1.0,
                              {std::nullopt, /*heads_interleaved=*/true});
  };
  torch::manual_seed(4);
  // The eager composition's rule is what is compared here; bf16 attention's fused node (another summation of
  // the softmax, tests/test_fused_attention.cpp checks it and its masking against float64) is switched off.
  const bool fused = dm::fused_attention_enabled();
  dm::set_fused_attention_enabled(false);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto q = torch::randn({2, 2, 5, 8}).to(dtype).requires_grad_(true);
    auto k = torch::randn({2, 2, 6, 8}).to(dtype).requires_grad_(true);
    auto v = torch::randn({2, 2, 6, 8}).to(dtype).requires_grad_(true);
    auto valid = torch::tensor({true, false, true, false, false, false, true, true, true, true, true, false}).view({2, 6});
    auto a = dm::scaled_dot_product_attention(q, k, v, valid);
    auto ga = torch::autograd::grad({a.pow(2).sum()}, {q, k, v});
    auto b = earlier(q, k, v, valid);
    auto gb = torch::autograd::grad({b.pow(2).sum()}, {q, k, v});
    EXPECT_TRUE(a.equal(b));
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(ga[i].equal(gb[i])) << i;
  }
  dm::set_fused_attention_enabled(fused);
}
