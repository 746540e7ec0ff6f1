// The KL autoencoder (model/autoencoder.h) and its configuration section:
// shapes and downsampling factor, the KL closed form against a hand computation,
// the loss parts, PSNR, and a few optimizer steps that lower the loss.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "model/autoencoder.h"
#include "trainer/autoencoder_trainer.h"
#include "trainer/config.h"

namespace dm = difftrain::model;
using difftrain::Config;
using difftrain::ConfigError;

namespace {

dm::AutoencoderOptions tiny(int64_t image_channels = 1) {
  dm::AutoencoderOptions o;
  o.image_channels = image_channels;
  o.base_channels = 8;
  o.channel_mults = {1, 2, 2};
  o.num_res_blocks = 1;
  o.latent_channels = 4;
  o.norm_groups = 4;
  return o;
}

std::string error_of(const std::vector<std::string>& overrides) {
  try {
    const Config c = difftrain::parse_config_text("", "test", overrides);
    difftrain::check_autoencoder_config(c);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Autoencoder, ShapesAndDownsamplingFactor) {
  torch::manual_seed(0);
  dm::AutoencoderKL net(tiny());
  EXPECT_EQ(dm::downsample_factor(net->options), 4);
  const auto x = torch::rand({3, 1, 32, 32}) * 2 - 1;
  const auto posterior = net->encode(x);
  EXPECT_EQ(posterior.mean.sizes(), (std::vector<int64_t>{3, 4, 8, 8}));
  EXPECT_EQ(posterior.logvar.sizes(), (std::vector<int64_t>{3, 4, 8, 8}));
  EXPECT_EQ(net->decode(posterior.mean).sizes(), (std::vector<int64_t>{3, 1, 32, 32}));
  // Any latent size decodes: 5x5 latents -> 20x20 images.
  EXPECT_EQ(net->decode(torch::randn({2, 4, 5, 5})).sizes(), (std::vector<int64_t>{2, 1, 20, 20}));

  for (const auto& [mults, f] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{{{1}, 1}, {{1, 2}, 2}, {{1, 1, 2, 2}, 8}}) {
    auto o = tiny(3);
    o.channel_mults = mults;
    dm::AutoencoderKL other(o);
    EXPECT_EQ(dm::downsample_factor(o), f);
    EXPECT_EQ(other->encode(torch::zeros({1, 3, 16, 16})).mean.sizes(), (std::vector<int64_t>{1, 4, 16 / f, 16 / f}));
  }
  EXPECT_THROW(net->encode(torch::zeros({1, 1, 30, 30})), c10::Error);  // 30 is not a multiple of f = 4
  EXPECT_THROW(net->encode(torch::zeros({1, 3, 32, 32})), c10::Error);  // 3 channels into a grey model
}

TEST(Autoencoder, LogVarianceIsClampedAndSamplingUsesIt) {
  dm::AutoencoderKL net(tiny());
  {
    torch::NoGradGuard g;
    auto& out = net->encoder->conv_out;
    out->weight.zero_();
    out->bias.slice(0, 0, 4).fill_(0.25);   // mean
    out->bias.slice(0, 4, 6).fill_(100);    // log-variance above the bound
    out->bias.slice(0, 6, 8).fill_(-100);   // and below it
  }
  const auto p = net->encode(torch::zeros({2, 1, 8, 8}));
  EXPECT_TRUE(torch::allclose(p.mean, torch::full_like(p.mean, 0.25)));
  EXPECT_TRUE(torch::all(p.logvar.slice(1, 0, 2) == dm::kMaxLogVariance).item<bool>());
  EXPECT_TRUE(torch::all(p.logvar.slice(1, 2, 4) == dm::kMinLogVariance).item<bool>());
  // z = mean + exp(logvar / 2) * noise
  const dm::Posterior q{torch::full({1, 1, 1, 1}, 0.5), torch::full({1, 1, 1, 1}, std::log(4.0))};
  EXPECT_NEAR(q.sample(torch::full({1, 1, 1, 1}, 1.5)).item<double>(), 0.5 + 2 * 1.5, 1e-6);
}

TEST(Autoencoder, KlClosedFormMatchesAHandComputation) {
  // Image 0: elements (m, log v) = (0.5, 0) and (-1, ln 2); image 1: (0, 0) twice.
  const auto mean = torch::tensor({0.5, -1.0, 0.0, 0.0}).view({2, 2, 1, 1});
  const auto logvar = torch::tensor({0.0, std::log(2.0), 0.0, 0.0}).view({2, 2, 1, 1});
  // 1/2 (m^2 + v - 1 - ln v): 1/2 (0.25 + 1 - 1 - 0) + 1/2 (1 + 2 - 1 - ln 2)
  const double image0 = 0.125 + 0.5 * (2.0 - std::log(2.0));
  const auto kl = dm::kl_to_standard_normal(mean, logvar);
  ASSERT_EQ(kl.sizes(), (std::vector<int64_t>{2}));
  EXPECT_NEAR(kl[0].item<double>(), image0, 1e-6);
  EXPECT_NEAR(kl[1].item<double>(), 0.0, 1e-7);
  // And against KL between Gaussians by Monte Carlo: E_q[log q(z) - log p(z)] for image 0's second element.
  torch::manual_seed(1);
  const double m = -1, s = std::sqrt(2.0);
  const auto z = m + s * torch::randn({2000000}, torch::kFloat64);
  const auto log_q = -0.5 * ((z - m) / s).pow(2) - std::log(s);
  const auto log_p = -0.5 * z.pow(2);
  EXPECT_NEAR((log_q - log_p).mean().item<double>(), 0.5 * (2.0 - std::log(2.0)), 3e-3);

  // The loss: per-element mean reconstruction + kl_weight * (KL summed per image, mean over images).
  const dm::Posterior p{mean, logvar};
  const auto x = torch::zeros({2, 1, 2, 2}), y = torch::full({2, 1, 2, 2}, 0.5);
  const auto l1 = dm::autoencoder_loss(x, y, p, 0.1, dm::ReconstructionLoss::kL1);
  EXPECT_NEAR(l1.reconstruction.item<double>(), 0.5, 1e-7);
  EXPECT_NEAR(l1.kl.item<double>(), image0 / 2, 1e-6);
  EXPECT_NEAR(l1.total.item<double>(), 0.5 + 0.1 * image0 / 2, 1e-6);
  const auto l2 = dm::autoencoder_loss(x, y, p, 0.0, dm::ReconstructionLoss::kL2);
  EXPECT_NEAR(l2.total.item<double>(), 0.25, 1e-7);
  EXPECT_EQ(dm::parse_reconstruction_loss("l2"), dm::ReconstructionLoss::kL2);
  EXPECT_THROW(dm::parse_reconstruction_loss("lpips"), std::invalid_argument);
}

TEST(Autoencoder, PsnrOnUnitRangePixels) {
  // 0 in [-1, 1] is 0.5 on [0, 1]; 0.2 is 0.6: error 0.1, MSE 0.01, 20 dB.
  const auto x = torch::zeros({2, 1, 4, 4});
  auto y = torch::full({2, 1, 4, 4}, 0.2);
  y[1].fill_(3.0);  // clamped to 1 (= 1.0 on [0, 1]): error 0.5, MSE 0.25, 6.02 dB
  const auto psnr = dm::psnr_db(x, y);
  EXPECT_NEAR(psnr[0].item<double>(), 20.0, 1e-5);  // 0.2 in float32
  EXPECT_NEAR(psnr[1].item<double>(), -10 * std::log10(0.25), 1e-9);
}

TEST(Autoencoder, AFewStepsLowerTheLossOnATinyBatch) {
  torch::manual_seed(0);
  dm::AutoencoderKL net(tiny());
  // Smooth images: sums of a few random low-frequency cosines.
  const auto grid = torch::linspace(0, 1, 16);
  const auto yy = grid.view({1, 1, 16, 1}), xx = grid.view({1, 1, 1, 16});
  auto x = torch::zeros({4, 1, 16, 16});
  for (int k = 0; k < 3; ++k)
    x = x + 0.3 * torch::cos(6.0 * torch::rand({4, 1, 1, 1}) * yy + 6.0 * torch::rand({4, 1, 1, 1}) * xx +
                              6.0 * torch::rand({4, 1, 1, 1}));
  x = x.clamp(-1, 1);
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(2e-3));
  const auto noise = torch::randn({4, 4, 4, 4});
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    optimizer.zero_grad();
    const auto p = net->encode(x);
    const auto loss = dm::autoencoder_loss(x, net->decode(p.sample(noise)), p, 1e-6, dm::ReconstructionLoss::kL1);
    loss.total.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.total.item<double>();
    ASSERT_TRUE(std::isfinite(last));
  }
  EXPECT_LT(last, 0.6 * first) << "first " << first << ", last " << last;
}

TEST(AutoencoderConfig, BadValuesAreNamed) {
  EXPECT_EQ(error_of({}), "");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"autoencoder.recon_loss=lpips"}, "autoencoder.recon_loss"},
      {{"autoencoder.kl_weight=2"}, "autoencoder.kl_weight"},
      {{"autoencoder.kl_weight=-1e-6"}, "autoencoder.kl_weight"},
      {{"autoencoder.kl_weight=nan"}, "autoencoder.kl_weight"},
      {{"autoencoder.channel_mults=[]"}, "autoencoder.channel_mults"},
      {{"autoencoder.channel_mults=[1, 2, 3]", "autoencoder.norm_groups=4", "autoencoder.base_channels=6"},
       "autoencoder.base_channels"},
      {{"autoencoder.norm_groups=0"}, "autoencoder.norm_groups"},
      {{"autoencoder.latent_channels=0"}, "autoencoder.latent_channels"},
      {{"autoencoder.num_res_blocks=0"}, "autoencoder.num_res_blocks"},
      {{"autoencoder.base_chanels=8"}, "autoencoder.base_channels"},  // "did you mean"
      {{"data.image_size=36", "model.channel_mults=[1, 2]", "model.attention_resolutions=[18]",
        "autoencoder.channel_mults=[1, 2, 2, 2]"}, "data.image_size"},  // 36 is not a multiple of f = 8
  };
  for (const auto& [overrides, key] : cases) {
    const std::string e = error_of(overrides);
    EXPECT_NE(e.find(key), std::string::npos) << overrides.front() << " gave: '" << e << "'";
  }
}

TEST(AutoencoderConfig, ResumeGeometryKeys) {
  EXPECT_TRUE(difftrain::is_autoencoder_geometry_key("autoencoder.latent_channels"));
  EXPECT_TRUE(difftrain::is_autoencoder_geometry_key("autoencoder.kl_weight"));
  EXPECT_TRUE(difftrain::is_autoencoder_geometry_key("data.image_size"));
  EXPECT_TRUE(difftrain::is_autoencoder_geometry_key("run.seed"));
  EXPECT_FALSE(difftrain::is_autoencoder_geometry_key("model.base_channels"));
  EXPECT_FALSE(difftrain::is_autoencoder_geometry_key("diffusion.timesteps"));
  EXPECT_FALSE(difftrain::is_autoencoder_geometry_key("train.lr"));
}
