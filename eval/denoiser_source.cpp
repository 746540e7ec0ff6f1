#include "eval/denoiser_source.h"

#include "trainer/precision.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>

#include "model/torchscript_export.h"
#include "model/unet.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace difftrain::eval {
namespace {

struct LoadedCheckpoint {
  Config config;
  model::UNet net{nullptr};
  std::string dir;
};

LoadedCheckpoint load_ema(const std::string& path) {
  LoadedCheckpoint c;
  c.dir = resolve_checkpoint(path);
  c.config = parse_config_text(read_checkpoint_config(c.dir), c.dir + "/config.yaml", {});
  c.net = model::UNet(model::unet_options_from(c.config.model, c.config.data.image_size, c.config.data.channels));
  load_ema_weights(c.dir, *c.net);
  c.net->eval();
  return c;
}

[[noreturn]] void bad_model(const std::string& path, const std::string& what) {
  throw std::runtime_error("TorchScript denoiser '" + path + "': " + what + " (see docs/EVALUATION.md)");
}

}  // namespace

DenoiserSource denoiser_from_model(model::UNet net, const Config& config, const std::string& description) {
  DenoiserSource s;
  s.network = [net](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& tokens) mutable {
    return net->forward(x, t, tokens);
  };
  s.prediction = diffusion::parse_prediction(config.diffusion.prediction);
  s.schedule = diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps);
  s.image_size = config.data.image_size;
  s.channels = config.data.channels;
  s.max_tokens = config.model.max_tokens;
  s.description = description;
  return s;
}

DenoiserSource load_checkpoint_denoiser(const std::string& path) {
  auto c = load_ema(path);
  return denoiser_from_model(c.net, c.config, "checkpoint " + c.dir);
}

DenoiserSource load_torchscript_denoiser(const std::string& path, int64_t image_size, int64_t max_tokens) {
  if (!std::filesystem::exists(path)) bad_model(path, "file does not exist");
  auto module = std::make_shared<torch::jit::Module>();
  try {
    *module = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    bad_model(path, std::string("cannot be loaded: ") + e.what_without_backtrace());
  }
  module->eval();
  if (!module->hasattr("alphas_cumprod")) bad_model(path, "has no attribute 'alphas_cumprod'");
  auto a = module->attr("alphas_cumprod").toTensor();
  if (a.dim() != 1 || a.size(0) < 2) bad_model(path, "'alphas_cumprod' must be a float64 vector of length T >= 2");
  DenoiserSource s;
  s.schedule = diffusion::schedule_from_alphas_cumprod(a.to(torch::kFloat64));
  if (module->hasattr("image_shape")) {
    auto shape = module->attr("image_shape").toTensor();
    s.channels = shape[0].item<int64_t>();
    s.image_size = shape[1].item<int64_t>();
  }
  if (module->hasattr("max_tokens")) s.max_tokens = module->attr("max_tokens").toTensor().item<int64_t>();
  if (image_size > 0) s.image_size = image_size;
  if (max_tokens > 0) s.max_tokens = max_tokens;
  if (s.image_size <= 0) bad_model(path, "carries no 'image_shape': pass --image-size");
  if (s.max_tokens <= 0) bad_model(path, "carries no 'max_tokens': pass --max-tokens");
  s.network = [module](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& tokens) {
    return module->forward({x, t, tokens}).toTensor();
  };
  s.description = "TorchScript " + path;
  return s;
}

DenoiserSource with_precision(DenoiserSource source, const std::string& precision) {
  if (precision == "fp32") return source;
  if (precision != "bf16")
    throw std::invalid_argument("sampling precision '" + precision + "': expected fp32 or bf16");
  source.network = [inner = source.network](const torch::Tensor& x, const torch::Tensor& t,
                                            const torch::Tensor& tokens) {
    AutocastScope autocast(Precision::kBf16, x.device());
    return inner(x, t, tokens).to(torch::kFloat32);
  };
  source.description += " (bf16 autocast)";
  return source;
}

void export_denoiser(const std::string& path, const std::string& out) {
  auto c = load_ema(path);
  const auto schedule = diffusion::make_schedule(c.config.diffusion.schedule, c.config.diffusion.timesteps);
  const auto prediction = diffusion::parse_prediction(c.config.diffusion.prediction);
  // Tensors the traced forward reads must be the very ones registered as buffers.
  auto alphas_cumprod = schedule.alphas_cumprod.clone();
  diffusion::NoiseSchedule traced_schedule = schedule;
  traced_schedule.alphas_cumprod = alphas_cumprod;
  const int64_t H = c.config.data.image_size, C = c.config.data.channels, L = c.config.model.max_tokens;
  auto net = c.net;
  model::TracedForward forward = [&](const std::vector<torch::Tensor>& in) {
    auto output = net->forward(in[0], in[1], in[2]);
    return diffusion::output_to_eps(prediction, traced_schedule, output, in[0], in[1]);
  };
  const std::vector<torch::Tensor> example = {torch::randn({2, C, H, H}), torch::tensor({int64_t{0}, schedule.timesteps - 1}, torch::kInt64),
                                              torch::zeros({2, L}, torch::kInt64)};
  model::export_torchscript(*net, "Denoiser", forward, example,
                            {{"alphas_cumprod", alphas_cumprod},
                             {"image_shape", torch::tensor({C, H, H}, torch::kInt64)},
                             {"max_tokens", torch::tensor(L, torch::kInt64)}},
                            out);
}

}  // namespace difftrain::eval
