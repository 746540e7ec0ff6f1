#include "cli/model_info_command.h"

#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "diffusion/objective.h"
#include "diffusion/schedule.h"
#include "eval/denoiser_source.h"
#include "model/unet.h"
#include "trainer/config.h"
#include "trainer/model_options.h"

namespace difftrain::cli {
namespace {

// 859520964 -> "859,520,964"
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

double peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // Linux reports KiB
}

struct Part {
  const char* label;
  std::vector<std::string> modules;  // top-level modules of UNetImpl
  int64_t count = 0;
};

// Parameters per part of the UNet, by the top-level module that owns them; the attention
// layers inside the blocks are also counted on a line of their own.
void print_parameter_counts(const model::UNetImpl& net) {
  std::vector<Part> parts = {{"text encoder", {"text_encoder"}},
                             {"time MLP", {"time_fc1", "time_fc2", "text_to_embedding"}},
                             {"conv in/out", {"conv_in", "norm_out", "conv_out"}},
                             {"down blocks", {"down_blocks", "downsamplers"}},
                             {"middle blocks", {"middle_blocks"}},
                             {"up blocks", {"up_blocks", "upsamplers"}}};
  int64_t total = 0, attention = 0;
  for (const auto& p : net.named_parameters()) {
    const std::string& name = p.key();
    const int64_t n = p.value().numel();
    total += n;
    if (name.find(".attention.") != std::string::npos) attention += n;
    const std::string top = name.substr(0, name.find('.'));
    for (auto& part : parts)
      if (std::find(part.modules.begin(), part.modules.end(), top) != part.modules.end()) part.count += n;
  }
  std::printf("parameters %s total (%.2f M; %.2f GB as float32)\n", grouped(total).c_str(),
              static_cast<double>(total) / 1e6, 4.0 * static_cast<double>(total) / 1e9);
  for (const auto& part : parts) {
    if (part.count == 0) continue;  // no text encoder with precomputed conditioning
    std::printf("  %-24s %15s\n", part.label, grouped(part.count).c_str());
  }
  std::printf("  %-24s %15s\n", "attention (in the blocks)", grouped(attention).c_str());
}

// A random precomputed conditioning of `batch` rows at the configured (L, D[, D']), every token real.
model::Conditioning example_condition(const model::UNetOptions& o, int64_t batch) {
  const int64_t L = o.text.max_tokens;
  if (o.conditioning == model::ConditioningSource::kBuiltin) return {};  // tokens instead
  model::Conditioning c;
  c.context = torch::randn({batch, L, o.context_dim});
  c.mask = torch::ones({batch, L}, torch::kBool);
  if (o.pooled_dim > 0) c.pooled = torch::randn({batch, o.pooled_dim});
  return c;
}

torch::Tensor forward_once(model::UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t) {
  const auto& o = net.options;
  if (o.conditioning == model::ConditioningSource::kBuiltin) {
    // Byte tokens (model/tokenizer.h): byte b is b + 1, 0 is padding.
    return net.forward(x, t, torch::randint(1, 257, {x.size(0), o.text.max_tokens}, torch::kInt64));
  }
  return net.forward(x, t, example_condition(o, x.size(0)));
}

void run_forward_backward(model::UNetImpl& net, const Config& config) {
  const int64_t C = model_input_channels(config), H = model_input_size(config);
  net.train();
  const auto x = torch::randn({1, C, H, H});
  const auto t = torch::full({1}, config.diffusion.timesteps / 2, torch::kInt64);
  const auto start = std::chrono::steady_clock::now();
  const auto output = forward_once(net, x, t);
  const auto loss = torch::mse_loss(output, torch::randn_like(output));
  const auto forward_done = std::chrono::steady_clock::now();
  loss.backward();
  const auto backward_done = std::chrono::steady_clock::now();
  int64_t nonfinite = 0;
  for (const auto& p : net.named_parameters()) {
    const auto& g = p.value().grad();
    if (g.defined() && !torch::isfinite(g).all().item<bool>()) ++nonfinite;
  }
  const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("forward+backward: batch 1, input (%lld, %lld, %lld), %d thread%s: forward %.2f s, backward %.2f s, "
              "peak RSS %.2f GB\n",
              static_cast<long long>(C), static_cast<long long>(H), static_cast<long long>(H),
              torch::get_num_threads(), torch::get_num_threads() == 1 ? "" : "s", seconds(start, forward_done),
              seconds(forward_done, backward_done), peak_rss_bytes() / 1e9);
  if (nonfinite > 0)
    throw std::runtime_error("forward+backward: " + std::to_string(nonfinite) +
                             " parameter tensors have non-finite gradients");
  // The gradients would otherwise stay allocated through the export.
  for (auto& p : net.parameters()) p.mutable_grad() = torch::Tensor();
}

}  // namespace

std::unique_ptr<ModelInfoCommand> add_model_info_command(CLI::App& app) {
  auto c = std::make_unique<ModelInfoCommand>();
  auto* cmd = app.add_subcommand(
      "model-info", "build the configured UNet and print its parameter count (optionally: one forward/backward, export)");
  c->app = cmd;
  cmd->add_option("--config", c->config_path, "YAML config (configs/); omitted = built-in defaults");
  cmd->add_option("--set", c->overrides, "key.path=value override (repeatable), e.g. --set data.latent_size=8");
  cmd->add_flag("--forward-backward", c->forward_backward,
                "run one forward and backward pass on batch 1 at the configured input size; print time and peak RSS");
  cmd->add_option("--export", c->export_path, "write the untrained model as a TorchScript denoiser (.pt) here");
  return c;
}

int run_model_info_command(const ModelInfoCommand& command) {
  const Config config = load_config(command.config_path, command.overrides);
  if (!command.export_path.empty()) {
    // Checked before minutes of building and running, not after.
    const auto parent = std::filesystem::absolute(command.export_path).parent_path();
    if (!std::filesystem::is_directory(parent))
      throw std::runtime_error("--export '" + command.export_path + "': directory '" + parent.string() +
                               "' does not exist");
    if (std::filesystem::is_directory(command.export_path))
      throw std::runtime_error("--export '" + command.export_path + "' is a directory, expected a file name");
  }
  torch::set_num_threads(static_cast<int>(config.train.threads));
  torch::manual_seed(config.run.seed);
  const auto options = unet_options_from(config.model, model_input_size(config), model_input_channels(config));
  model::UNet net(options);
  const int64_t C = model_input_channels(config), H = model_input_size(config);
  std::printf("model %s: input (%lld, %lld, %lld)%s, ", command.config_path.empty() ? "(built-in defaults)"
                                                                               : command.config_path.c_str(),
              static_cast<long long>(C), static_cast<long long>(H), static_cast<long long>(H),
              config.data.latents ? " latents" : "");
  if (options.conditioning == model::ConditioningSource::kBuiltin) {
    std::printf("built-in text encoder on %lld byte tokens\n", static_cast<long long>(options.text.max_tokens));
  } else {
    std::printf("precomputed context (%lld, %lld)%s\n", static_cast<long long>(options.text.max_tokens),
                static_cast<long long>(options.context_dim),
                options.pooled_dim > 0 ? (", pooled " + std::to_string(options.pooled_dim)).c_str() : "");
  }
  print_parameter_counts(*net);
  std::fflush(stdout);
  if (command.forward_backward) {
    run_forward_backward(*net, config);
    std::fflush(stdout);
  }
  if (!command.export_path.empty()) {
    // The untrained model, through `difftrain export`'s own code and contract (eval/denoiser_source.h).
    eval::export_denoiser(net, config, command.export_path);
    std::printf("TorchScript denoiser written to %s\n", command.export_path.c_str());
  }
  return 0;
}

}  // namespace difftrain::cli
