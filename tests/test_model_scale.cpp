// The UNet at a published scale: configs/sd15.yaml must build Stable Diffusion 1.5's UNet
// (859,520,964 parameters), train at a tiny latent size, and the options that give it that
// shape must leave every existing configuration's module exactly as it was.
// The SD-sized tests hold 3.4 GB of weights (7 GB with gradients): RUN_SERIAL (tests/model.cmake).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/unet.h"
#include "trainer/config.h"
#include "trainer/model_options.h"

namespace dm = difftrain::model;

namespace {

const std::string kConfigs = DIFFTRAIN_CONFIGS_DIR;

// diffusers' UNet2DConditionModel of runwayml/stable-diffusion-v1-5.
constexpr int64_t kSd15Parameters = 859520964;

dm::UNet build(const difftrain::Config& c) {
  return dm::UNet(difftrain::unet_options_from(c.model, difftrain::model_input_size(c),
                                               difftrain::model_input_channels(c)));
}

int64_t parameter_count(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

void fnv1a(uint64_t* h, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) *h = (*h ^ bytes[i]) * 1099511628211ull;
}

struct ModuleIdentity {
  int64_t count = 0;
  size_t tensors = 0;
  uint64_t names_and_shapes = 1469598103934665603ull;  // FNV-1a over names and shapes, in order
  uint64_t values = 1469598103934665603ull;            // FNV-1a over the float bytes, in order
};

ModuleIdentity identity_of(const difftrain::Config& c) {
  torch::manual_seed(0);
  auto net = build(c);
  ModuleIdentity id;
  for (const auto& p : net->named_parameters()) {
    id.count += p.value().numel();
    ++id.tensors;
    fnv1a(&id.names_and_shapes, p.key().data(), p.key().size());
    for (int64_t s : p.value().sizes()) fnv1a(&id.names_and_shapes, &s, sizeof s);
    const auto v = p.value().contiguous();
    fnv1a(&id.values, v.data_ptr(), static_cast<size_t>(v.numel() * v.element_size()));
  }
  return id;
}

dm::UNetOptions tiny_options() {
  dm::UNetOptions o;
  o.image_size = 8;
  o.base_channels = 8;
  o.channel_mults = {1, 2};
  o.attention_resolutions = {8};
  o.attention_heads = 2;
  o.norm_groups = 4;
  o.text = {16, 16, 1, 2};
  return o;
}

}  // namespace

// Measured with the model code before the published-shape options existed (seed 0): the
// parameter count, the parameter names and shapes in registration order, and the initial
// values of three configurations. Checkpoints, optimizer state and the bit-identical resume
// tests rely on all three.
TEST(ModelScale, ExistingConfigurationsBuildTheSameModuleAsBefore) {
  struct Case {
    std::string name;
    difftrain::Config config;
    ModuleIdentity before;
  };
  const std::vector<Case> cases = {
      {"built-in defaults", difftrain::load_config("", {}), {1484931, 287, 0x5dcc4056ab7b3174, 0x2aa07b156bde7768}},
      {"configs/default.yaml", difftrain::load_config(kConfigs + "/default.yaml", {}),
       {1484419, 287, 0xae5ef36f4c6d7f9c, 0x7ef7df21d36f31a2}},
      {"precomputed 16/8",
       difftrain::load_config("", {"model.conditioning=precomputed", "model.context_dim=16", "model.pooled_dim=8"}),
       {1316419, 256, 0x31e16604e18cb655, 0x114d4fe91f23a82b}},
  };
  for (const auto& c : cases) {
    const auto now = identity_of(c.config);
    EXPECT_EQ(now.count, c.before.count) << c.name;
    EXPECT_EQ(now.tensors, c.before.tensors) << c.name;
    EXPECT_EQ(now.names_and_shapes, c.before.names_and_shapes) << c.name;
    EXPECT_EQ(now.values, c.before.values) << c.name;
  }
}

// Every detail of SD 1.5's UNet that holds parameters is reproduced (docs/CONFIG.md, "Published
// UNet shapes"), so the count is the published one exactly, not merely within 0.1 %.
TEST(ModelScale, Sd15ConfigHasThePublishedParameterCount) {
  const auto config = difftrain::load_config(kConfigs + "/sd15.yaml", {});
  auto net = build(config);
  const int64_t n = parameter_count(*net);
  EXPECT_LE(std::abs(static_cast<double>(n - kSd15Parameters)), 1e-3 * kSd15Parameters);
  EXPECT_EQ(n, kSd15Parameters);
  // One transformer block at C = 320 against diffusers' Transformer2DModel: GroupNorm 2C, proj_in and
  // proj_out C^2 + C each, 3 LayerNorms 6C, self-attention 4C^2 + C, cross-attention 2C^2 + 2*768C + C,
  // GEGLU C*8C + 8C + 4C*C + C: 20C^2 + 1557C.
  auto first = net->down_blocks->ptr(0)->as<dm::UNetBlockImpl>();
  ASSERT_TRUE(first->attention);
  EXPECT_EQ(parameter_count(*first->attention), 20 * 320 * 320 + 1557 * 320);
  // SD's ResnetBlock2D(320, 320) with a Linear(1280, 320) time embedding.
  EXPECT_EQ(parameter_count(*first->res), 2 * (2 * 320 + 9 * 320 * 320 + 320) + 1280 * 320 + 320);
  // The middle block attends at 8 x 8 (middle_attention) though 8 is not an attention resolution.
  EXPECT_TRUE(net->middle_blocks->ptr(0)->as<dm::UNetBlockImpl>()->attention);
  EXPECT_EQ(net->up_blocks->size(), 12u);
}

// One training step's forward and backward of the SD-1.5 UNet on a 4 x 8 x 8 latent (64 px),
// activation checkpointing on as configs/sd15.yaml has it: every parameter gets a finite gradient.
TEST(ModelScale, Sd15ForwardBackwardAtLatentSize8) {
  torch::set_num_threads(2);
  const auto config = difftrain::load_config(
      kConfigs + "/sd15.yaml", {"data.latent_size=8", "model.attention_resolutions=[8, 4, 2]"});
  torch::manual_seed(0);
  auto net = build(config);
  {
    // The zero-initialised output layers get weights, so every parameter is on the gradient's path.
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters())
      if (p.abs().max().item<float>() == 0) p.normal_(0, 0.02);
  }
  net->train();
  const auto x = torch::randn({1, 4, 8, 8});
  const auto t = torch::tensor({500}, torch::kInt64);
  dm::Conditioning c;
  c.context = torch::randn({1, 77, 768});
  c.mask = torch::arange(77).lt(12).unsqueeze(0);  // 12 real tokens, then padding
  const auto out = net->forward(x, t, c);
  ASSERT_EQ(out.sizes(), x.sizes());
  torch::mse_loss(out, torch::randn_like(out)).backward();
  int64_t without = 0, nonfinite = 0;
  std::vector<std::string> zero;
  for (const auto& p : net->named_parameters()) {
    const auto& g = p.value().grad();
    if (!g.defined()) {
      ++without;
      ADD_FAILURE() << p.key() << " has no gradient";
      continue;
    }
    if (!torch::isfinite(g).all().item<bool>()) ++nonfinite;
    if (g.abs().max().item<float>() == 0) zero.push_back(p.key());
  }
  EXPECT_EQ(without, 0);
  EXPECT_EQ(nonfinite, 0);
  // The middle block is at 1 x 1 here: self-attention over one position gives it weight 1 whatever
  // its score, so queries and keys get no gradient there, and only there.
  EXPECT_EQ(zero, (std::vector<std::string>{"middle_blocks.0.attention.self_attention.to_q.weight",
                                            "middle_blocks.0.attention.self_attention.to_k.weight"}));
}

// GEGLU (Shazeer 2020, eq. 6) in LDM's layout: the first half of proj is the value, the second the gate.
TEST(ModelScale, GegluFeedForwardIsValueTimesGeluOfGate) {
  torch::manual_seed(0);
  dm::GegluFeedForward ff(6, 4);
  EXPECT_EQ(ff->proj->weight.sizes(), (std::vector<int64_t>{48, 6}));
  EXPECT_EQ(ff->out->weight.sizes(), (std::vector<int64_t>{6, 24}));
  const auto x = torch::randn({2, 5, 6});
  const auto h = ff->proj(x);
  const auto value = h.slice(-1, 0, 24), gate = h.slice(-1, 24, 48);
  const auto gelu = 0.5 * gate * (1 + torch::erf(gate / std::sqrt(2.0)));
  EXPECT_TRUE(torch::allclose(ff(x), ff->out(value * gelu), 1e-5, 1e-6));
}

// Without scale/shift the time embedding is projected to C and added before norm2 (DDPM, SD).
TEST(ModelScale, AdditiveTimeEmbeddingIsAddedBeforeNorm2) {
  torch::manual_seed(0);
  dm::ResBlock block(8, 8, 12, 4, 0.0, /*scale_shift_norm=*/false);
  EXPECT_EQ(block->embedding_proj->weight.size(0), 8);
  {
    torch::NoGradGuard g;
    block->conv2->weight.normal_(0, 0.1);
  }
  const auto x = torch::randn({2, 8, 4, 4}), e = torch::randn({2, 12});
  auto h = block->conv1(torch::silu(block->norm1(x)));
  h = block->norm2(h + block->embedding_proj(torch::silu(e)).unsqueeze(-1).unsqueeze(-1));
  const auto expected = x + block->conv2(torch::silu(h));
  EXPECT_TRUE(torch::allclose(block(x, e), expected, 1e-5, 1e-6));
}

// With projections, proj_out starts at zero: the block is the identity, and its attention output
// layers keep their default initialisation (LDM's SpatialTransformer).
TEST(ModelScale, AttentionWithProjectionsStartsAsTheIdentity) {
  torch::manual_seed(0);
  dm::SpatialAttention a(16, 2, 8, 4, /*ff_mult=*/4, /*projections=*/true);
  ASSERT_TRUE(a->proj_in && a->proj_out && a->ff && a->norm_ff);
  EXPECT_GT(a->self_attention->to_out->weight.abs().max().item<float>(), 0);
  const auto x = torch::randn({2, 16, 4, 4});
  const auto context = torch::randn({2, 3, 8});
  const auto mask = torch::ones({2, 3}, torch::kBool);
  EXPECT_TRUE(torch::equal(a(x, context, mask), x));
  {
    torch::NoGradGuard g;
    a->proj_out->weight.normal_(0, 0.1);
  }
  EXPECT_GT((a(x, context, mask) - x).abs().max().item<float>(), 1e-3);
  // Without projections the feed-forward's output layer is the zeroed one.
  dm::SpatialAttention plain(16, 2, 8, 4, 4, false);
  EXPECT_FALSE(plain->proj_in);
  EXPECT_EQ(plain->ff->out->weight.abs().max().item<float>(), 0);
}

TEST(ModelScale, MiddleAttentionAttendsAtTheLowestResolution) {
  auto o = tiny_options();  // attention at 8 only; the middle block is at 4
  EXPECT_FALSE(dm::UNet(o)->middle_blocks->ptr(0)->as<dm::UNetBlockImpl>()->attention);
  o.middle_attention = true;
  dm::UNet net(o);
  EXPECT_TRUE(net->middle_blocks->ptr(0)->as<dm::UNetBlockImpl>()->attention);
  EXPECT_FALSE(net->middle_blocks->ptr(1)->as<dm::UNetBlockImpl>()->attention);
}

TEST(ModelScale, ConfigRejectsBadValuesOfTheNewKeys) {
  auto message = [](const std::vector<std::string>& overrides) {
    try {
      difftrain::load_config("", overrides);
    } catch (const difftrain::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message({"model.transformer_ff_mult=-1"}).find("model.transformer_ff_mult"), std::string::npos);
  EXPECT_NE(message({"model.transformer_ff_mult=17"}).find("in [0, 16]"), std::string::npos);
  EXPECT_NE(message({"model.scale_shift_norm=maybe"}).find("model.scale_shift_norm"), std::string::npos);
  // 3 heads divide 96 (the attention level, 32 x 3) but not 64, the middle block's width.
  const std::string heads = message({"model.channel_mults=[3, 2]", "model.attention_resolutions=[32]",
                                     "model.attention_heads=3", "model.norm_groups=8", "model.middle_attention=true"});
  EXPECT_NE(heads.find("model.attention_heads"), std::string::npos) << heads;
  EXPECT_NE(heads.find("middle"), std::string::npos) << heads;
}
