#include "eval/denoiser_source.h"

#include <ATen/autocast_mode.h>

#include "trainer/precision.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "eval/digest.h"
#include "model/torchscript_export.h"
#include "model/unet.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/model_options.h"

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
  c.config = parse_saved_config(read_checkpoint_config(c.dir), c.dir + "/config.yaml", nullptr, nullptr);
  c.net = model::UNet(unet_options_from(c.config.model, model_input_size(c.config), model_input_channels(c.config)));
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
  if (config.model.conditioning == "precomputed") {
    const auto& m = config.model;
    s.text = TextConditioning{m.max_tokens, m.context_dim, m.pooled_dim, m.text_encoder, m.text_null, description};
    s.network = [net, text = *s.text](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& rows) mutable {
      return net->forward(x, t, unpack_conditions(rows, text.tokens, text.width, text.pooled_width));
    };
  } else {
    // A sampler calls the network with the same captions at every step: the text encoder's output
    // is kept from the previous call while the tokens and the autocast state are the same (values
    // identical to encoding again; diffusers' pipelines likewise encode the prompt once). Only
    // without gradients: training never goes through here with the same tokens twice.
    struct EncodedCaptions {
      torch::Tensor tokens;
      bool autocast = false;
      model::Conditioning condition;
    };
    auto cache = std::make_shared<EncodedCaptions>();
    s.network = [net, cache](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& tokens) mutable {
      if (torch::GradMode::is_enabled()) return net->forward(x, t, tokens);
      const bool autocast = at::autocast::is_cpu_enabled() || at::autocast::is_enabled();
      if (!cache->tokens.defined() || cache->autocast != autocast || !cache->tokens.sizes().equals(tokens.sizes()) ||
          cache->tokens.device() != tokens.device() || !torch::equal(cache->tokens, tokens)) {
        cache->condition = net->encode_tokens(tokens);
        cache->tokens = tokens.clone();
        cache->autocast = autocast;
      }
      return net->forward(x, t, cache->condition);
    };
  }
  s.prediction = diffusion::parse_prediction(config.diffusion.prediction);
  // Sampling reads a zero-terminal-SNR schedule with a tiny finite alpha_bar_{T-1} (diffusion/schedule.h).
  s.schedule = diffusion::with_finite_terminal_snr(
      diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps, config.diffusion.zero_terminal_snr,
                               config.diffusion.flow_shift));
  s.image_size = model_input_size(config);
  s.channels = model_input_channels(config);
  s.max_tokens = config.model.max_tokens;
  s.latents = config.data.latents;
  s.description = description;
  return s;
}

int64_t output_channels(const DenoiserSource& source) {
  return source.decoder ? source.decoder->vae->output_shape()[0] : source.channels;
}

int64_t output_size(const DenoiserSource& source) {
  return source.decoder ? source.decoder->vae->output_shape()[1] : source.image_size;
}

void attach_latent_decoder(DenoiserSource* source, const Config& config, const std::string& path,
                           const std::string& option) {
  if (!config.data.latents) {
    if (!path.empty())
      throw std::runtime_error(option + " " + path + ": " + source->description +
                               " diffuses images (data.latents=false), not latents: it needs no VAE decoder");
    return;
  }
  if (path.empty())
    throw std::runtime_error(source->description + " diffuses latents (data.latents=true, from " +
                             config.data.latent_encoder + "): pass the VAE decoder that turns them into images with " +
                             option + " (docs/LATENTS.md)");
  source->decoder = load_latent_decoder(path, config);
  // The decoder makes the images too: results keyed by the source change with it.
  if (!source->identity.empty()) source->identity += " vae-decoder sha256=" + source->decoder->vae->sha256();
}

DenoiserSource load_checkpoint_denoiser(const std::string& path, const std::string& vae_decoder) {
  auto c = load_ema(path);
  auto source = denoiser_from_model(c.net, c.config, "checkpoint " + c.dir);
  // The weights and the config (schedule, prediction) make the images, not the directory's name.
  Sha256 h;
  h.text(sha256_of_module(*c.net)).text(read_checkpoint_config(c.dir));
  source.identity = "checkpoint step=" + std::to_string(read_training_state(c.dir).step) + " sha256=" + h.hex();
  attach_latent_decoder(&source, c.config, vae_decoder, "--vae-decoder");
  return source;
}

namespace {

// TorchScript errors carry the interpreter's traceback over many lines; the error line is the last.
std::string last_line(const std::string& text) {
  const auto end = text.find_last_not_of(" \n\r\t");
  if (end == std::string::npos) return text;
  const auto start = text.find_last_of('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
}

// alphas_cumprod defines the schedule: every sampler divides by sqrt(alpha_bar) and
// sqrt(1 - alpha_bar), so a value outside (0, 1) or a step that does not add noise breaks them.
torch::Tensor checked_alphas_cumprod(const std::string& path, const torch::jit::IValue& value) {
  if (!value.isTensor()) bad_model(path, "'alphas_cumprod' is not a tensor");
  const auto a = value.toTensor();
  if (!a.is_floating_point() || a.dim() != 1 || a.size(0) < 2 || a.size(0) > kMaxTimesteps) {
    std::ostringstream shape;
    shape << a.sizes() << " " << a.dtype();
    bad_model(path, "'alphas_cumprod' is " + shape.str() + ", expected a float64 vector of length T in 2.." +
                        std::to_string(kMaxTimesteps));
  }
  const auto values = a.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* v = values.data_ptr<double>();
  const auto at = [&](int64_t i) {
    std::ostringstream out;
    out << "value " << v[i] << " at index " << i;
    return out.str();
  };
  for (int64_t i = 0; i < values.size(0); ++i) {
    if (!std::isfinite(v[i])) bad_model(path, "'alphas_cumprod' has the non-finite " + at(i));
    if (!(v[i] > 0 && v[i] < 1))
      bad_model(path, "'alphas_cumprod' has the " + at(i) + ", expected every value in (0, 1) (a zero-terminal-SNR "
                      "schedule is exported with a tiny last value, as difftrain export does)");
    if (i > 0 && !(v[i] < v[i - 1]))
      bad_model(path, "'alphas_cumprod' is not strictly decreasing: " + at(i) + " after " + at(i - 1));
  }
  return values;
}

void check_integer_attribute(const std::string& path, const torch::jit::Module& module, const char* name,
                          int64_t elements) {
  const auto value = module.attr(name);
  if (!value.isTensor() || value.toTensor().is_floating_point() || value.toTensor().numel() != elements)
    bad_model(path, std::string("'") + name + "' must be an int64 tensor of " + std::to_string(elements) +
                        (elements == 1 ? " element" : " elements"));
}

// One forward on a small batch (both ends of the schedule, null condition) before any sampling:
// a model with the wrong output shape or non-finite outputs is named now, not mid-run.
void probe_forward(const std::string& path, torch::jit::Module& module, const DenoiserSource& s) {
  torch::NoGradGuard no_grad;
  const int64_t C = s.channels, H = s.image_size;
  const auto x = torch::linspace(-2.0, 2.0, 2 * C * H * H, torch::kFloat32).reshape({2, C, H, H});
  const auto t = torch::tensor({int64_t{0}, s.schedule.timesteps - 1}, torch::kInt64);
  std::vector<torch::jit::IValue> inputs = {x, t};
  std::string condition;
  if (s.text) {
    const int64_t L = s.text->tokens, D = s.text->width, P = s.text->pooled_width;
    inputs.push_back(torch::zeros({2, L, D}));
    inputs.push_back(torch::ones({2, L}, torch::kBool));
    if (P > 0) inputs.push_back(torch::zeros({2, P}));
    condition = "context (2, " + std::to_string(L) + ", " + std::to_string(D) + "), mask (2, " + std::to_string(L) +
                ")" + (P > 0 ? ", pooled (2, " + std::to_string(P) + ")" : "");
  } else {
    inputs.push_back(torch::zeros({2, s.max_tokens}, torch::kInt64));
    condition = "tokens (2, " + std::to_string(s.max_tokens) + ")";
  }
  const std::string batch = "a probe batch x_t (2, " + std::to_string(C) + ", " + std::to_string(H) + ", " +
                            std::to_string(H) + "), t = (0, " + std::to_string(s.schedule.timesteps - 1) + "), " +
                            condition;
  torch::jit::IValue out;
  try {
    out = module.forward(inputs);
  } catch (const c10::Error& e) {
    bad_model(path, "forward on " + batch + " failed: " + last_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    bad_model(path, "forward on " + batch + " failed: " + last_line(e.what()));
  }
  if (!out.isTensor()) bad_model(path, "forward on " + batch + " returned " + out.tagKind() + ", expected a tensor");
  const auto y = out.toTensor();
  if (y.sizes() != x.sizes()) {
    std::ostringstream shape;
    shape << y.sizes();
    bad_model(path, "forward on " + batch + " returned shape " + shape.str() + ", expected x_t's shape");
  }
  if (!y.is_floating_point()) bad_model(path, "forward on " + batch + " returned a non-floating-point tensor");
  if (!torch::isfinite(y).all().item<bool>())
    bad_model(path, "forward on " + batch + " returned non-finite values (NaN or inf)");
}

}  // namespace

DenoiserSource load_torchscript_denoiser(const std::string& path, int64_t image_size, int64_t max_tokens) {
  if (!std::filesystem::exists(path)) bad_model(path, "file does not exist");
  if (std::filesystem::is_directory(path)) bad_model(path, "is a directory, expected a TorchScript file");
  auto module = std::make_shared<torch::jit::Module>();
  try {
    *module = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    bad_model(path, std::string("cannot be loaded: ") + e.what_without_backtrace());
  }
  module->eval();
  if (!module->hasattr("alphas_cumprod")) bad_model(path, "has no attribute 'alphas_cumprod'");
  DenoiserSource s;
  s.schedule = diffusion::schedule_from_alphas_cumprod(checked_alphas_cumprod(path, module->attr("alphas_cumprod")));
  if (module->hasattr("image_shape")) {
    check_integer_attribute(path, *module, "image_shape", 3);
    const auto shape = module->attr("image_shape").toTensor().to(torch::kInt64).contiguous();
    const int64_t C = shape[0].item<int64_t>(), H = shape[1].item<int64_t>(), W = shape[2].item<int64_t>();
    const std::string found =
        "'image_shape' = (" + std::to_string(C) + ", " + std::to_string(H) + ", " + std::to_string(W) + ")";
    if (C != 1 && C != 3) bad_model(path, found + ": expected C = 1 (grey) or 3 (RGB)");
    if (H != W || H < 1 || H > kMaxImageSize)
      bad_model(path, found + ": expected square images, H = W in 1.." + std::to_string(kMaxImageSize));
    s.channels = C;
    s.image_size = H;
  }
  if (module->hasattr("max_tokens")) {
    check_integer_attribute(path, *module, "max_tokens", 1);
    s.max_tokens = module->attr("max_tokens").toTensor().to(torch::kInt64).item<int64_t>();
    if (s.max_tokens < 1 || s.max_tokens > kMaxTokens)
      bad_model(path, "'max_tokens' = " + std::to_string(s.max_tokens) + ": expected 1.." + std::to_string(kMaxTokens));
  }
  if (image_size > 0) s.image_size = image_size;
  if (max_tokens > 0) s.max_tokens = max_tokens;
  if (s.image_size <= 0) bad_model(path, "carries no 'image_shape': pass --image-size");
  if (s.max_tokens <= 0) bad_model(path, "carries no 'max_tokens': pass --max-tokens");
  // A denoiser of precomputed embeddings declares their widths; it records no encoder identity.
  if (module->hasattr("context_dim")) {
    check_integer_attribute(path, *module, "context_dim", 1);
    if (!module->hasattr("pooled_dim")) bad_model(path, "has 'context_dim' but no 'pooled_dim' (0 for none)");
    check_integer_attribute(path, *module, "pooled_dim", 1);
    TextConditioning text;
    text.tokens = s.max_tokens;
    text.width = module->attr("context_dim").toTensor().to(torch::kInt64).item<int64_t>();
    text.pooled_width = module->attr("pooled_dim").toTensor().to(torch::kInt64).item<int64_t>();
    text.origin = "TorchScript denoiser " + path;
    if (text.width < 1 || text.width > 65536 || text.pooled_width < 0 || text.pooled_width > 65536)
      bad_model(path, "'context_dim' = " + std::to_string(text.width) + ", 'pooled_dim' = " +
                          std::to_string(text.pooled_width) + ": expected 1..65536 and 0..65536");
    s.text = text;
  }
  probe_forward(path, *module, s);
  if (s.text) {
    s.network = [module, text = *s.text](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& rows) {
      const auto c = unpack_conditions(rows, text.tokens, text.width, text.pooled_width);
      std::vector<torch::jit::IValue> inputs = {x, t, c.context, c.mask};
      if (c.pooled.defined()) inputs.push_back(c.pooled);
      return module->forward(inputs).toTensor();
    };
  } else {
    s.network = [module](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& tokens) {
      return module->forward({x, t, tokens}).toTensor();
    };
  }
  s.description = "TorchScript " + path;
  s.identity = "torchscript sha256=" + sha256_of_file(path);
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
  const auto c = load_ema(path);
  export_denoiser(c.net, c.config, out);
}

void export_denoiser(model::UNet net, const Config& config, const std::string& out) {
  // A zero-terminal-SNR model is exported with the schedule sampling uses (alpha_bar_{T-1} tiny, not 0): its eps
  // output then still carries x0-hat at t = T-1, and the file's alphas_cumprod is what every sampler can read.
  const auto schedule = diffusion::with_finite_terminal_snr(
      diffusion::make_schedule(config.diffusion.schedule, config.diffusion.timesteps, config.diffusion.zero_terminal_snr,
                               config.diffusion.flow_shift));
  const auto prediction = diffusion::parse_prediction(config.diffusion.prediction);
  // Tensors the traced forward reads must be the very ones registered as buffers.
  auto alphas_cumprod = schedule.alphas_cumprod.clone();
  diffusion::NoiseSchedule traced_schedule = schedule;
  traced_schedule.alphas_cumprod = alphas_cumprod;
  // A latent model's denoiser works on latents; its VAE decoder is a file of its own (docs/LATENTS.md).
  const int64_t H = model_input_size(config), C = model_input_channels(config), L = config.model.max_tokens;
  const bool precomputed = config.model.conditioning == "precomputed";
  const int64_t D = config.model.context_dim, P = config.model.pooled_dim;
  model::TracedForward forward = [&](const std::vector<torch::Tensor>& in) {
    const auto x = diffusion::network_input(prediction, traced_schedule, in[0], in[1]);
    auto output = precomputed ? net->forward(x, in[1], model::Conditioning{in[2], in[3], P > 0 ? in[4] : torch::Tensor()})
                              : net->forward(x, in[1], in[2]);
    return diffusion::output_to_eps(prediction, traced_schedule, output, in[0], in[1]);
  };
  std::vector<torch::Tensor> example = {torch::randn({2, C, H, H}),
                                        torch::tensor({int64_t{0}, schedule.timesteps - 1}, torch::kInt64)};
  std::vector<std::pair<std::string, torch::Tensor>> attributes = {
      {"alphas_cumprod", alphas_cumprod},
      {"image_shape", torch::tensor({C, H, H}, torch::kInt64)},
      {"max_tokens", torch::tensor(L, torch::kInt64)}};
  if (precomputed) {
    // The second row's mask has padding, so the trace covers masked keys.
    example.push_back(torch::randn({2, L, D}));
    example.push_back(torch::arange(L).lt(torch::tensor({L, (L + 1) / 2}).unsqueeze(1)));
    if (P > 0) example.push_back(torch::randn({2, P}));
    attributes.push_back({"context_dim", torch::tensor(D, torch::kInt64)});
    attributes.push_back({"pooled_dim", torch::tensor(P, torch::kInt64)});
  } else {
    example.push_back(torch::zeros({2, L}, torch::kInt64));
  }
  model::export_torchscript(*net, "Denoiser", forward, example, attributes, out);
}

}  // namespace difftrain::eval
