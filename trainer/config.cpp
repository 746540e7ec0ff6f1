#include "trainer/config.h"

#include "monitoring/pushgateway.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <type_traits>

namespace difftrain {
namespace {

// The shortest decimal that reads back as exactly `value` (0.1 stays "0.1", not 0.10000000000000001).
std::string exact_double(double value) {
  char buf[40];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

// The one list of configuration keys. `v(path, field)` is called per key.
template <class Visitor>
void visit_config_fields(Config& c, Visitor&& v) {
  v("run.dir", c.run.dir);
  v("run.seed", c.run.seed);
  v("run.name", c.run.name);
  v("data.dir", c.data.dir);
  v("data.synthetic", c.data.synthetic);
  v("data.synthetic_count", c.data.synthetic_count);
  v("data.image_size", c.data.image_size);
  v("data.channels", c.data.channels);
  v("data.random_flip", c.data.random_flip);
  v("data.prefetch_batches", c.data.prefetch_batches);
  v("data.latents", c.data.latents);
  v("data.latent_channels", c.data.latent_channels);
  v("data.latent_size", c.data.latent_size);
  v("data.latent_scale", c.data.latent_scale);
  v("data.latent_shift", c.data.latent_shift);
  v("data.latent_encoder", c.data.latent_encoder);
  v("model.base_channels", c.model.base_channels);
  v("model.channel_mults", c.model.channel_mults);
  v("model.num_res_blocks", c.model.num_res_blocks);
  v("model.attention_resolutions", c.model.attention_resolutions);
  v("model.attention_heads", c.model.attention_heads);
  v("model.norm_groups", c.model.norm_groups);
  v("model.transformer_ff_mult", c.model.transformer_ff_mult);
  v("model.attention_projections", c.model.attention_projections);
  v("model.scale_shift_norm", c.model.scale_shift_norm);
  v("model.middle_attention", c.model.middle_attention);
  v("model.dropout", c.model.dropout);
  v("model.checkpoint_activations", c.model.checkpoint_activations);
  v("model.text_width", c.model.text_width);
  v("model.text_layers", c.model.text_layers);
  v("model.text_heads", c.model.text_heads);
  v("model.max_tokens", c.model.max_tokens);
  v("model.conditioning", c.model.conditioning);
  v("model.context_dim", c.model.context_dim);
  v("model.pooled_dim", c.model.pooled_dim);
  v("model.text_encoder", c.model.text_encoder);
  v("model.text_null", c.model.text_null);
  v("diffusion.timesteps", c.diffusion.timesteps);
  v("diffusion.schedule", c.diffusion.schedule);
  v("diffusion.flow_shift", c.diffusion.flow_shift);
  v("diffusion.zero_terminal_snr", c.diffusion.zero_terminal_snr);
  v("diffusion.prediction", c.diffusion.prediction);
  v("diffusion.loss_weighting", c.diffusion.loss_weighting);
  v("diffusion.min_snr_gamma", c.diffusion.min_snr_gamma);
  v("diffusion.timestep_sampling", c.diffusion.timestep_sampling);
  v("diffusion.lognormal_mean", c.diffusion.lognormal_mean);
  v("diffusion.lognormal_std", c.diffusion.lognormal_std);
  v("diffusion.logit_normal_mean", c.diffusion.logit_normal_mean);
  v("diffusion.logit_normal_std", c.diffusion.logit_normal_std);
  v("diffusion.offset_noise", c.diffusion.offset_noise);
  v("train.batch_size", c.train.batch_size);
  v("train.grad_accum_steps", c.train.grad_accum_steps);
  v("train.max_steps", c.train.max_steps);
  v("train.lr", c.train.lr);
  v("train.warmup_steps", c.train.warmup_steps);
  v("train.min_lr_ratio", c.train.min_lr_ratio);
  v("train.weight_decay", c.train.weight_decay);
  v("train.adam_beta1", c.train.adam_beta1);
  v("train.adam_beta2", c.train.adam_beta2);
  v("train.grad_clip", c.train.grad_clip);
  v("train.ema_decay", c.train.ema_decay);
  v("train.ema_profiles", c.train.ema_profiles);
  v("train.ema_snapshot_every", c.train.ema_snapshot_every);
  v("train.cond_dropout", c.train.cond_dropout);
  v("train.precision", c.train.precision);
  v("train.device", c.train.device);
  v("train.threads", c.train.threads);
  v("train.log_every", c.train.log_every);
  v("train.nonfinite_patience", c.train.nonfinite_patience);
  v("train.on_divergence", c.train.on_divergence);
  v("train.max_rollbacks", c.train.max_rollbacks);
  v("distributed.bucket_mb", c.distributed.bucket_mb);
  v("distributed.first_bucket_mb", c.distributed.first_bucket_mb);
  v("distributed.timeout_seconds", c.distributed.timeout_seconds);
  v("checkpoint.every", c.checkpoint.every);
  v("checkpoint.keep", c.checkpoint.keep);
  v("monitoring.enabled", c.monitoring.enabled);
  v("monitoring.host", c.monitoring.host);
  v("monitoring.port", c.monitoring.port);
  v("monitoring.pushgateway", c.monitoring.pushgateway);
  v("eval.every", c.eval.every);
  v("eval.extractor", c.eval.extractor);
  v("eval.reference", c.eval.reference);
  v("eval.samples", c.eval.samples);
  v("eval.sampler", c.eval.sampler);
  v("eval.steps", c.eval.steps);
  v("eval.guidance", c.eval.guidance);
  v("eval.batch_size", c.eval.batch_size);
  v("eval.captions", c.eval.captions);
  v("eval.prompts", c.eval.prompts);
  v("eval.prompts_every", c.eval.prompts_every);
  v("eval.prompts_images", c.eval.prompts_images);
  v("eval.text_encoder", c.eval.text_encoder);
  v("eval.text_tokenizer", c.eval.text_tokenizer);
  v("eval.vae_decoder", c.eval.vae_decoder);
  v("autoencoder.base_channels", c.autoencoder.base_channels);
  v("autoencoder.channel_mults", c.autoencoder.channel_mults);
  v("autoencoder.num_res_blocks", c.autoencoder.num_res_blocks);
  v("autoencoder.latent_channels", c.autoencoder.latent_channels);
  v("autoencoder.norm_groups", c.autoencoder.norm_groups);
  v("autoencoder.kl_weight", c.autoencoder.kl_weight);
  v("autoencoder.recon_loss", c.autoencoder.recon_loss);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  return parts;
}

YAML::Node find_node(const YAML::Node& root, const std::string& path) {
  YAML::Node node = YAML::Clone(root);
  for (const auto& part : split_path(path)) {
    if (!node.IsMap() || !node[part]) return YAML::Node(YAML::NodeType::Undefined);
    node = node[part];
  }
  return node;
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "null";
}

[[noreturn]] void wrong_type(const std::string& source, const std::string& path, const char* expected,
                             const YAML::Node& node) {
  throw ConfigError(source + ": config key '" + path + "' expects " + expected + ", got " + describe(node));
}

enum class Parsed { kOk, kNotANumber, kOutOfRange };

// The whole string must be the number: "12abc" is not 12.
template <class T, class Convert>
Parsed parse_number(const std::string& s, T* out, Convert convert) {
  if (s.empty()) return Parsed::kNotANumber;
  size_t used = 0;
  try {
    *out = convert(s, &used);
  } catch (const std::out_of_range&) {
    return Parsed::kOutOfRange;
  } catch (...) {
    return Parsed::kNotANumber;
  }
  return used == s.size() ? Parsed::kOk : Parsed::kNotANumber;
}

Parsed parse_int(const std::string& s, int64_t* out) {
  return parse_number(s, out, [](const std::string& v, size_t* used) { return std::stoll(v, used); });
}

Parsed parse_double(const std::string& s, double* out) {
  return parse_number(s, out, [](const std::string& v, size_t* used) { return std::stod(v, used); });
}

constexpr const char* kIntegerExpected = "an integer";
constexpr const char* kIntegerRange = "an integer in [-9223372036854775808, 9223372036854775807] (64 bits)";
constexpr const char* kNumberRange = "a number within double precision (magnitude 2.2e-308 to 1.8e308, or 0)";

struct FromYaml {
  const YAML::Node& root;
  const std::string& source;
  const std::map<std::string, std::string>* overridden = nullptr;  // key -> the override that set it

  std::string where(const std::string& path) const {
    if (overridden == nullptr) return source;
    const auto it = overridden->find(path);
    return it == overridden->end() ? source : "override '" + it->second + "'";
  }

  void operator()(const std::string& path, std::string& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar()) wrong_type(where(path), path, "a string", n);
    field = n.Scalar();
  }
  void operator()(const std::string& path, int64_t& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar()) wrong_type(where(path), path, kIntegerExpected, n);
    const Parsed p = parse_int(n.Scalar(), &field);
    if (p != Parsed::kOk) wrong_type(where(path), path, p == Parsed::kOutOfRange ? kIntegerRange : kIntegerExpected, n);
  }
  void operator()(const std::string& path, double& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar()) wrong_type(where(path), path, "a number", n);
    const Parsed p = parse_double(n.Scalar(), &field);
    if (p != Parsed::kOk) wrong_type(where(path), path, p == Parsed::kOutOfRange ? kNumberRange : "a number", n);
  }
  void operator()(const std::string& path, bool& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    const std::string s = n.IsScalar() ? n.Scalar() : "";
    if (s == "true") field = true;
    else if (s == "false") field = false;
    else wrong_type(where(path), path, "true or false", n);
  }
  void operator()(const std::string& path, std::vector<int64_t>& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsSequence()) wrong_type(where(path), path, "a list of integers", n);
    field.clear();
    for (const auto& item : n) {
      int64_t value = 0;
      if (!item.IsScalar()) wrong_type(where(path), path, "a list of integers", n);
      const Parsed p = parse_int(item.Scalar(), &value);
      if (p == Parsed::kOutOfRange) wrong_type(where(path), path, "a list of 64-bit integers", item);
      if (p != Parsed::kOk) wrong_type(where(path), path, "a list of integers", n);
      field.push_back(value);
    }
  }
  void operator()(const std::string& path, std::vector<double>& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsSequence()) wrong_type(where(path), path, "a list of numbers", n);
    field.clear();
    for (const auto& item : n) {
      double value = 0;
      if (!item.IsScalar() || parse_double(item.Scalar(), &value) != Parsed::kOk)
        wrong_type(where(path), path, "a list of numbers", n);
      field.push_back(value);
    }
  }
  void operator()(const std::string& path, std::vector<std::string>& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsSequence()) wrong_type(where(path), path, "a list of strings", n);
    field.clear();
    for (const auto& item : n) {
      if (!item.IsScalar()) wrong_type(where(path), path, "a list of strings", n);
      field.push_back(item.Scalar());
    }
  }
};

void collect_leaf_paths(const YAML::Node& node, const std::string& prefix, std::vector<std::string>* out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      collect_leaf_paths(kv.second, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else {
    out->push_back(prefix);
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::vector<std::string> known_keys() {
  std::vector<std::string> keys;
  Config scratch;
  visit_config_fields(scratch, [&](const std::string& path, auto&) { keys.push_back(path); });
  return keys;
}

void reject_unknown_keys(const YAML::Node& root, const std::string& source) {
  if (!root.IsDefined() || root.IsNull()) return;
  if (!root.IsMap()) throw ConfigError(source + ": expected a YAML mapping of config sections at the top level");
  const auto keys = known_keys();
  const std::set<std::string> known(keys.begin(), keys.end());
  std::vector<std::string> leaves;
  collect_leaf_paths(root, "", &leaves);
  for (const auto& leaf : leaves) {
    if (known.count(leaf)) continue;
    std::string best;
    size_t best_distance = 4;
    for (const auto& k : keys) {
      size_t d = edit_distance(leaf, k);
      if (d < best_distance) best_distance = d, best = k;
    }
    std::string msg = source + ": unknown config key '" + leaf + "'";
    if (!best.empty()) msg += " (did you mean '" + best + "'?)";
    throw ConfigError(msg);
  }
}

// yaml-cpp keeps every entry of a repeated key but operator[] finds only the
// first, so a repeated key (or a repeated section) would silently lose values.
// `with_lines`: the mapping came from a file, whose line numbers mean something.
void reject_duplicate_keys(const YAML::Node& node, const std::string& prefix, const std::string& source,
                           bool with_lines) {
  if (node.IsSequence()) {
    for (const auto& item : node) reject_duplicate_keys(item, prefix, source, with_lines);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, int> first_line;
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    const int line = kv.first.Mark().line + 1;
    const auto [previous, inserted] = first_line.emplace(key, line);
    if (!inserted) {
      std::string msg = source + ": config key '" + path + "' is given twice";
      if (with_lines) msg += " (lines " + std::to_string(previous->second) + " and " + std::to_string(line) + ")";
      throw ConfigError(msg + "; give each key once");
    }
    reject_duplicate_keys(kv.second, path, source, with_lines);
  }
}

void set_path(YAML::Node& root, const std::vector<std::string>& parts, const YAML::Node& value,
              const std::string& override_text) {
  // yaml-cpp nodes are handles: walking with operator[] on a copy mutates the tree.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (next.IsDefined() && !next.IsMap() && !next.IsNull())
      throw ConfigError("override '" + override_text + "': '" + parts[i] + "' is not a section");
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
}

// (Not by reassigning a Node variable to a child: yaml-cpp's Node::operator= rebinds the node it referred to.)
void set_leaves(YAML::Node& root, const std::string& path, const YAML::Node& value, const std::string& override_text) {
  if (!value.IsMap()) return set_path(root, split_path(path), value, override_text);
  for (const auto& kv : value) set_leaves(root, path + "." + kv.first.Scalar(), kv.second, override_text);
}

// A mapping value sets each of its keys (train={lr: 1e-3} sets train.lr and keeps
// the file's other train keys). A key set by two overrides is an error: the
// command line would otherwise depend on the order of its words.
void apply_override(YAML::Node& root, const std::string& override_text, std::map<std::string, std::string>* set_by) {
  const auto eq = override_text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("override '" + override_text + "': expected key.path=value");
  const std::string path = override_text.substr(0, eq);
  const std::string value_text = override_text.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("override '" + override_text + "': value is not valid YAML: " + e.msg);
  }
  reject_duplicate_keys(value, path, "override '" + override_text + "'", false);
  std::vector<std::string> leaves;
  collect_leaf_paths(value, path, &leaves);
  for (const auto& leaf : leaves) {
    const auto [previous, inserted] = set_by->emplace(leaf, override_text);
    if (!inserted)
      throw ConfigError("override '" + override_text + "': config key '" + leaf + "' is already set by override '" +
                        previous->second + "'; give each key once");
  }
  set_leaves(root, path, value, override_text);
}

template <class T>
void require(bool ok, const std::string& path, const T& value, const std::string& expected) {
  if (ok) return;
  std::ostringstream os;
  os << "config key '" << path << "' = " << value << ": expected " << expected;
  throw ConfigError(os.str());
}

// Upper bounds, each explained in docs/CONFIG.md: beyond them a value is a typo, or
// asks for more memory or time than any machine has, and the run should stop at
// start naming the key rather than be OOM-killed or overflow later.
constexpr int64_t kMaxImageSize = 4096;
constexpr int64_t kMaxLatentChannels = 256;
constexpr double kMaxLatentScale = 1e6;
constexpr int64_t kMaxSyntheticCount = 1000000;
constexpr int64_t kMaxPrefetchBatches = 64;
constexpr int64_t kMaxLevels = 8;           // len(model.channel_mults)
constexpr int64_t kMaxBaseChannels = 2048;
constexpr int64_t kMaxChannelMult = 64;
constexpr int64_t kMaxLevelChannels = 8192;  // base_channels * mult of any level
constexpr int64_t kMaxResBlocks = 16;
constexpr int64_t kMaxFeedForwardMult = 16;  // model.transformer_ff_mult; SD has 4
constexpr int64_t kMaxTextWidth = 4096;
constexpr int64_t kMaxContextDim = 16384;
constexpr int64_t kMaxTextLayers = 48;
constexpr int64_t kMaxTokens = 1024;
constexpr int64_t kMaxTimesteps = 100000;
constexpr int64_t kMaxBatch = 65536;
constexpr double kMaxLearningRate = 1.0;
constexpr int64_t kMaxThreads = 1024;
constexpr double kMinBucketMb = 1e-6;  // one byte: the reducer's capacity is bucket_mb * 1e6 bytes, and must be >= 1
constexpr double kMaxBucketMb = 1e5;
constexpr double kMaxTimeoutSeconds = 86400;
constexpr int64_t kMaxCheckpointsKept = 1000;
constexpr int64_t kMaxEvalSamples = 1000000;
constexpr double kMaxGuidance = 100;
constexpr int64_t kMaxPromptImages = 64;
// No single tensor of a step may exceed this: training keeps several such
// activations for backward, so a step needing one larger fits no accelerator
// (an H200 has 141 GB) and no ordinary host.
constexpr double kMaxTensorBytes = 32.0 * (int64_t{1} << 30);

std::string list_text(const std::vector<int64_t>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

std::string gigabytes(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  return buf;
}

// Side of each UNet level (model/unet.cpp halves it after every level but the last).
std::vector<int64_t> level_resolutions(const Config& c) {
  std::vector<int64_t> sides;
  for (size_t level = 0; level < c.model.channel_mults.size(); ++level) sides.push_back(model_input_size(c) >> level);
  return sides;
}

bool has_attention(const Config& c, int64_t side) {
  const auto& r = c.model.attention_resolutions;
  return std::find(r.begin(), r.end(), side) != r.end();
}

// The UNet of model/unet.cpp must be buildable from these values, with no
// divisor zero and no configured part silently left out.
void validate_model(const Config& c) {
  const auto& m = c.model;
  require(!m.channel_mults.empty() && static_cast<int64_t>(m.channel_mults.size()) <= kMaxLevels,
          "model.channel_mults", list_text(m.channel_mults), "1 to 8 levels");
  require(m.base_channels >= 1 && m.base_channels <= kMaxBaseChannels, "model.base_channels", m.base_channels,
          "in [1, 2048]");
  // timestep_embedding(t, base_channels) is cos/sin pairs: an odd width would lose one dimension.
  require(m.base_channels % 2 == 0, "model.base_channels", m.base_channels,
          "an even number (the sinusoidal timestep embedding has base_channels dimensions, in cos/sin pairs)");
  require(m.norm_groups >= 1, "model.norm_groups", m.norm_groups, ">= 1");
  require(m.base_channels % m.norm_groups == 0, "model.norm_groups", m.norm_groups,
          "a divisor of model.base_channels = " + std::to_string(m.base_channels) +
              " (the first block normalises base_channels channels)");
  for (int64_t mult : m.channel_mults) {
    require(mult >= 1 && mult <= kMaxChannelMult && m.base_channels * mult <= kMaxLevelChannels,
            "model.channel_mults", list_text(m.channel_mults),
            "multipliers in [1, 64] with model.base_channels * mult <= 8192 channels");
    require((m.base_channels * mult) % m.norm_groups == 0, "model.channel_mults", mult,
            "positive multipliers with base_channels * mult divisible by model.norm_groups");
  }
  const int64_t downsamples = static_cast<int64_t>(m.channel_mults.size()) - 1;
  const std::string size_key = c.data.latents ? "data.latent_size" : "data.image_size";
  require(model_input_size(c) % (int64_t{1} << downsamples) == 0, size_key, model_input_size(c),
          "divisible by 2^(len(model.channel_mults) - 1)");
  const auto sides = level_resolutions(c);
  const std::string which = "; this UNet's levels have resolutions " + list_text(sides) + " (" + size_key + " " +
                            std::to_string(model_input_size(c)) + " halved after each level of model.channel_mults)";
  require(!m.attention_resolutions.empty(), "model.attention_resolutions", "[]",
          "at least one resolution: without attention layers the caption reaches the UNet only through its "
          "pooled embedding (no cross-attention)" + which);
  for (int64_t side : m.attention_resolutions)
    require(std::find(sides.begin(), sides.end(), side) != sides.end(), "model.attention_resolutions",
            list_text(m.attention_resolutions), "only resolutions the UNet has (a listed one it lacks would get no attention)" + which);
  require(m.attention_heads >= 1, "model.attention_heads", m.attention_heads, ">= 1");
  for (size_t level = 0; level < sides.size(); ++level) {
    const int64_t channels = m.base_channels * m.channel_mults[level];
    if (has_attention(c, sides[level]))
      require(channels % m.attention_heads == 0, "model.attention_heads", m.attention_heads,
              "a divisor of " + std::to_string(channels) + ", the channel count at attention resolution " +
                  std::to_string(sides[level]));
  }
  if (m.middle_attention) {
    const int64_t channels = m.base_channels * m.channel_mults.back();
    require(channels % m.attention_heads == 0, "model.attention_heads", m.attention_heads,
            "a divisor of " + std::to_string(channels) + ", the channel count of the middle block "
            "(model.middle_attention=true)");
  }
  require(m.transformer_ff_mult >= 0 && m.transformer_ff_mult <= kMaxFeedForwardMult, "model.transformer_ff_mult",
          m.transformer_ff_mult, "in [0, 16] (0: no feed-forward in the attention blocks; Stable Diffusion has 4)");
  require(m.num_res_blocks >= 1 && m.num_res_blocks <= kMaxResBlocks, "model.num_res_blocks", m.num_res_blocks,
          "in [1, 16]");
  require(m.dropout >= 0 && m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)");
  require(m.text_heads >= 1, "model.text_heads", m.text_heads, ">= 1");
  require(m.text_width >= 1 && m.text_width <= kMaxTextWidth && m.text_width % m.text_heads == 0, "model.text_width",
          m.text_width, "in [1, 4096] and a multiple of model.text_heads = " + std::to_string(m.text_heads));
  require(m.text_layers >= 0 && m.text_layers <= kMaxTextLayers, "model.text_layers", m.text_layers, "in [0, 48]");
  require(m.max_tokens >= 1 && m.max_tokens <= kMaxTokens, "model.max_tokens", m.max_tokens, "in [1, 1024]");
  require(m.conditioning == "builtin" || m.conditioning == "precomputed", "model.conditioning", m.conditioning,
          "builtin or precomputed");
  if (m.conditioning == "precomputed") {
    require(m.context_dim >= 1 && m.context_dim <= kMaxContextDim, "model.context_dim", m.context_dim,
            "in [1, 16384] with model.conditioning=precomputed: D of the shards' text_states (difftrain encode-text)");
    require(m.pooled_dim >= 0 && m.pooled_dim <= kMaxContextDim, "model.pooled_dim", m.pooled_dim,
            "in [0, 16384]: D' of the shards' text_pooled, 0 when they have none");
  } else {
    require(m.context_dim == 0, "model.context_dim", m.context_dim, "0 (unset) with model.conditioning=builtin");
    require(m.pooled_dim == 0, "model.pooled_dim", m.pooled_dim, "0 (unset) with model.conditioning=builtin");
  }
}

// `images` per forward: one full-resolution feature map (images x base_channels
// x side^2 floats) and each self-attention score tensor (images x heads x
// (side^2)^2 floats) must stay under kMaxTensorBytes. Called after validate_model.
void validate_memory_of(const std::string& key, int64_t value, int64_t images, const Config& c,
                        const std::string& hint) {
  const double n = static_cast<double>(images), side = static_cast<double>(model_input_size(c));
  const double feature_map = 4.0 * n * static_cast<double>(c.model.base_channels) * side * side;
  require(feature_map <= kMaxTensorBytes, key, value,
          "a batch whose activations fit in memory: one full-resolution feature map (images x model.base_channels "
          "x the UNet's input size^2 x 4 bytes) would be " + gigabytes(feature_map) + ", above the 34.4 GB (32 GiB) limit" +
              hint);
  for (int64_t r : c.model.attention_resolutions) {
    const double positions = static_cast<double>(r) * static_cast<double>(r);
    const double scores = 4.0 * n * static_cast<double>(c.model.attention_heads) * positions * positions;
    require(scores <= kMaxTensorBytes, key, value,
            "a batch whose attention fits in memory: self-attention at resolution " + std::to_string(r) +
                " (model.attention_resolutions) needs a score tensor of images x heads x " + std::to_string(r) +
                "^4 x 4 bytes = " + gigabytes(scores) + ", above the 34.4 GB (32 GiB) limit; attend at lower "
                "resolutions or use smaller batches" + hint);
  }
}

// The autoencoder.* section (model/autoencoder.h) must build; checked for every command like
// every section. What depends on the data (image side divisible by f) is checked by
// `difftrain autoencoder train` (trainer/autoencoder_trainer.cpp), since `train` does not use it.
void validate_autoencoder(const Config& c) {
  const auto& a = c.autoencoder;
  require(!a.channel_mults.empty() && static_cast<int64_t>(a.channel_mults.size()) <= kMaxLevels,
          "autoencoder.channel_mults", list_text(a.channel_mults), "1 to 8 levels (downsampling factor 2^(levels - 1))");
  require(a.norm_groups >= 1, "autoencoder.norm_groups", a.norm_groups, ">= 1");
  require(a.base_channels >= 1 && a.base_channels <= kMaxBaseChannels && a.base_channels % a.norm_groups == 0,
          "autoencoder.base_channels", a.base_channels,
          "in [1, 2048] and divisible by autoencoder.norm_groups = " + std::to_string(a.norm_groups));
  for (int64_t mult : a.channel_mults)
    require(mult >= 1 && mult <= kMaxChannelMult && a.base_channels * mult <= kMaxLevelChannels &&
                (a.base_channels * mult) % a.norm_groups == 0,
            "autoencoder.channel_mults", list_text(a.channel_mults),
            "multipliers in [1, 64] with autoencoder.base_channels * mult <= 8192 and divisible by "
            "autoencoder.norm_groups");
  require(a.num_res_blocks >= 1 && a.num_res_blocks <= kMaxResBlocks, "autoencoder.num_res_blocks", a.num_res_blocks,
          "in [1, 16]");
  require(a.latent_channels >= 1 && a.latent_channels <= 256, "autoencoder.latent_channels", a.latent_channels,
          "in [1, 256]");
  require(a.kl_weight >= 0 && a.kl_weight <= 1, "autoencoder.kl_weight", a.kl_weight,
          "in [0, 1] (LDM's KL autoencoders use 1e-6; near 1 the posterior collapses to the prior)");
  require(a.recon_loss == "l1" || a.recon_loss == "l2", "autoencoder.recon_loss", a.recon_loss, "l1 or l2");
}

void validate_memory(const Config& c) {
  const double sample_bytes = c.data.latents ? 2.0 * static_cast<double>(c.data.latent_channels * c.data.latent_size * c.data.latent_size)
                                             : static_cast<double>(c.data.image_size * c.data.image_size * c.data.channels);
  validate_memory_of("train.batch_size", c.train.batch_size, c.train.batch_size, c,
                     "; lower train.batch_size (and raise train.grad_accum_steps to keep the step's batch)");
  const double prefetch = static_cast<double>(c.data.prefetch_batches) * static_cast<double>(c.train.batch_size) *
                          sample_bytes;
  require(prefetch <= kMaxTensorBytes, "data.prefetch_batches", c.data.prefetch_batches,
          "a read-ahead that fits in memory: prefetch_batches x train.batch_size x sample bytes would be " +
              gigabytes(prefetch) + ", above the 34.4 GB (32 GiB) limit");
}

}  // namespace

Config parse_config_text(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(source_name + ": malformed YAML at line " + std::to_string(e.mark.line + 1) + ", column " +
                      std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  reject_duplicate_keys(root, "", source_name, true);
  reject_unknown_keys(root, source_name);
  std::map<std::string, std::string> set_by_override;
  for (const auto& o : overrides) apply_override(root, o, &set_by_override);
  reject_unknown_keys(root, "command-line override");
  Config config;
  visit_config_fields(config, FromYaml{root, source_name, &set_by_override});
  // Resolved here, so the printed and saved configuration shows the label the metrics carry.
  if (config.run.name.empty()) config.run.name = monitoring::run_name_of_dir(config.run.dir);
  validate_config(config);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::string text;
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) throw ConfigError("config file '" + path + "' cannot be opened");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  return parse_config_text(text, path.empty() ? "built-in defaults" : path, overrides);
}

void validate_config(const Config& c) {
  // Every number must be finite: NaN fails no comparison's negation and inf passes every lower bound.
  Config scratch = c;
  visit_config_fields(scratch, [](const std::string& path, auto& field) {
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, double>)
      require(std::isfinite(field), path, field, "a finite number");
  });
  require(c.data.image_size >= 8 && c.data.image_size <= kMaxImageSize, "data.image_size", c.data.image_size,
          "in [8, 4096]");
  require(c.data.synthetic_count >= 1 && c.data.synthetic_count <= kMaxSyntheticCount, "data.synthetic_count",
          c.data.synthetic_count, "in [1, 1000000]");
  require(c.data.prefetch_batches >= 1 && c.data.prefetch_batches <= kMaxPrefetchBatches, "data.prefetch_batches",
          c.data.prefetch_batches, "in [1, 64]");
  require(c.data.channels == 1 || c.data.channels == 3, "data.channels", c.data.channels, "1 (grey) or 3 (RGB)");
  require(!c.data.synthetic || c.data.channels == 3, "data.channels", c.data.channels,
          "3 with data.synthetic=true (the built-in shapes are RGB)");
  require(!c.data.dir.empty(), "data.dir", "''", "a directory of *.h5 shards");
  if (c.data.latents) {
    require(!c.data.synthetic, "data.synthetic", "true",
            "false with data.latents=true (the built-in dataset has images only; add latents to shards with "
            "`difftrain encode-images`)");
    require(c.data.latent_channels >= 1 && c.data.latent_channels <= kMaxLatentChannels, "data.latent_channels",
            c.data.latent_channels, "in [1, 256]: c of the shards' latents (N, c, h, w)");
    require(c.data.latent_size >= 1 && c.data.latent_size <= kMaxImageSize, "data.latent_size", c.data.latent_size,
            "in [1, 4096]: h = w of the shards' latents (N, c, h, w)");
    require(!c.data.random_flip, "data.random_flip", "true",
            "false with data.latents=true (a flipped latent is not the latent of the flipped image)");
  }
  require(c.data.latent_scale >= 0 && c.data.latent_scale <= kMaxLatentScale, "data.latent_scale",
          c.data.latent_scale, "in [0, 1e6]; 0 = the shards' latent_scale attribute");
  require(std::fabs(c.data.latent_shift) <= kMaxLatentScale, "data.latent_shift", c.data.latent_shift,
          "in [-1e6, 1e6]");
  require(c.model.text_null.empty() || c.model.text_null == "empty" || c.model.text_null == "zeros",
          "model.text_null", "'" + c.model.text_null + "'",
          "empty (the empty caption's embedding), zeros, or unset (resolved from the shards)");
  validate_model(c);
  validate_autoencoder(c);
  require(c.diffusion.timesteps >= 2 && c.diffusion.timesteps <= kMaxTimesteps, "diffusion.timesteps",
          c.diffusion.timesteps, "in [2, 100000]");
  require(c.diffusion.schedule == "linear" || c.diffusion.schedule == "cosine" || c.diffusion.schedule == "flow",
          "diffusion.schedule", c.diffusion.schedule, "linear, cosine or flow");
  require(c.diffusion.flow_shift > 0 && c.diffusion.flow_shift <= 100, "diffusion.flow_shift", c.diffusion.flow_shift,
          "in (0, 100] (SD3 uses 3.0 at 1024 px; 1 = no shift)");
  require(c.diffusion.flow_shift == 1.0 || c.diffusion.schedule == "flow", "diffusion.flow_shift",
          c.diffusion.flow_shift, "1 unless diffusion.schedule = flow (only the flow schedule is shifted)");
  require(!c.diffusion.zero_terminal_snr || c.diffusion.prediction != "eps", "diffusion.prediction",
          c.diffusion.prediction, "v, x0 or flow with diffusion.zero_terminal_snr (at alpha_bar = 0 the input is pure "
          "noise and eps = x_t carries nothing about the image; Lin et al. 2023 train v)");
  require(c.diffusion.schedule != "flow" || c.diffusion.prediction != "eps", "diffusion.prediction",
          c.diffusion.prediction, "flow, v or x0 with diffusion.schedule = flow (it ends in pure noise, where eps = x_t "
          "carries nothing about the image; rectified flow predicts the velocity: diffusion.prediction = flow)");
  require(c.diffusion.prediction == "eps" || c.diffusion.prediction == "v" || c.diffusion.prediction == "x0" ||
              c.diffusion.prediction == "flow",
          "diffusion.prediction", c.diffusion.prediction, "eps, v, x0 or flow");
  require(c.diffusion.loss_weighting == "uniform" || c.diffusion.loss_weighting == "min_snr",
          "diffusion.loss_weighting", c.diffusion.loss_weighting, "uniform or min_snr");
  require(c.diffusion.min_snr_gamma > 0 && c.diffusion.min_snr_gamma <= 1e4, "diffusion.min_snr_gamma",
          c.diffusion.min_snr_gamma, "in (0, 10000] (Hang et al. use 5)");
  require(c.diffusion.timestep_sampling == "uniform" || c.diffusion.timestep_sampling == "lognormal" ||
              c.diffusion.timestep_sampling == "logit_normal",
          "diffusion.timestep_sampling", c.diffusion.timestep_sampling, "uniform, lognormal or logit_normal");
  require(c.diffusion.logit_normal_mean >= -20 && c.diffusion.logit_normal_mean <= 20, "diffusion.logit_normal_mean",
          c.diffusion.logit_normal_mean, "in [-20, 20] (logit of t/T; SD3 uses 0)");
  require(c.diffusion.logit_normal_std > 0 && c.diffusion.logit_normal_std <= 20, "diffusion.logit_normal_std",
          c.diffusion.logit_normal_std, "in (0, 20] (SD3 uses 1)");
  require(c.diffusion.lognormal_mean >= -20 && c.diffusion.lognormal_mean <= 20, "diffusion.lognormal_mean",
          c.diffusion.lognormal_mean, "in [-20, 20] (ln sigma; EDM uses -1.2)");
  require(c.diffusion.lognormal_std > 0 && c.diffusion.lognormal_std <= 20, "diffusion.lognormal_std",
          c.diffusion.lognormal_std, "in (0, 20] (EDM uses 1.2)");
  require(c.diffusion.offset_noise >= 0 && c.diffusion.offset_noise <= 1, "diffusion.offset_noise",
          c.diffusion.offset_noise, "in [0, 1]");
  require(c.train.batch_size >= 1 && c.train.batch_size <= kMaxBatch, "train.batch_size", c.train.batch_size,
          "in [1, 65536]");
  require(c.train.grad_accum_steps >= 1 && c.train.grad_accum_steps <= kMaxBatch, "train.grad_accum_steps",
          c.train.grad_accum_steps, "in [1, 65536]");
  validate_memory(c);
  require(c.distributed.bucket_mb >= kMinBucketMb && c.distributed.bucket_mb <= kMaxBucketMb, "distributed.bucket_mb",
          c.distributed.bucket_mb, "in [1e-06, 100000] MB (one byte to 100 GB)");
  require(c.distributed.first_bucket_mb >= kMinBucketMb && c.distributed.first_bucket_mb <= kMaxBucketMb,
          "distributed.first_bucket_mb", c.distributed.first_bucket_mb, "in [1e-06, 100000] MB (one byte to 100 GB)");
  require(c.distributed.timeout_seconds > 0 && c.distributed.timeout_seconds <= kMaxTimeoutSeconds,
          "distributed.timeout_seconds", c.distributed.timeout_seconds, "in (0, 86400] (at most a day)");
  require(c.train.max_steps >= 1, "train.max_steps", c.train.max_steps, ">= 1");
  require(c.train.lr > 0 && c.train.lr <= kMaxLearningRate, "train.lr", c.train.lr,
          "in (0, 1] (AdamW moves every weight by about lr per step)");
  require(c.train.warmup_steps >= 0, "train.warmup_steps", c.train.warmup_steps, ">= 0");
  require(c.train.min_lr_ratio >= 0 && c.train.min_lr_ratio <= 1, "train.min_lr_ratio", c.train.min_lr_ratio,
          "in [0, 1]");
  require(c.train.weight_decay >= 0 && c.train.weight_decay <= 1, "train.weight_decay", c.train.weight_decay,
          "in [0, 1]");
  require(c.train.lr * c.train.weight_decay < 1, "train.weight_decay", c.train.weight_decay,
          "train.lr * train.weight_decay < 1 (AdamW multiplies the weights by 1 - lr * weight_decay every step)");
  require(c.train.adam_beta1 >= 0 && c.train.adam_beta1 < 1, "train.adam_beta1", c.train.adam_beta1, "in [0, 1)");
  require(c.train.adam_beta2 >= 0 && c.train.adam_beta2 < 1, "train.adam_beta2", c.train.adam_beta2, "in [0, 1)");
  require(c.train.grad_clip >= 0, "train.grad_clip", c.train.grad_clip, ">= 0 (0 disables clipping)");
  require(c.train.ema_decay >= 0 && c.train.ema_decay < 1, "train.ema_decay", c.train.ema_decay, "in [0, 1)");
  {
    const auto& widths = c.train.ema_profiles;
    std::string text = "[";
    for (size_t i = 0; i < widths.size(); ++i) text += (i ? ", " : "") + exact_double(widths[i]);
    text += "]";
    require(widths.size() <= 8, "train.ema_profiles", text, "at most 8 widths (each keeps a copy of the weights)");
    for (size_t i = 0; i < widths.size(); ++i) {
      require(widths[i] > 0 && widths[i] < 0.28867513459481287,  // kMaxSigmaRel, trainer/power_ema.h
              "train.ema_profiles", text,
              "relative widths sigma_rel in (0, 0.2887) (EDM2 keeps 0.05 and 0.10)");
      for (size_t j = 0; j < i; ++j)
        require(widths[i] != widths[j], "train.ema_profiles", text, "distinct widths");
    }
  }
  require(c.train.ema_snapshot_every >= 0, "train.ema_snapshot_every", c.train.ema_snapshot_every,
          ">= 0 (0: at every checkpoint)");
  require(c.train.cond_dropout >= 0 && c.train.cond_dropout < 1, "train.cond_dropout", c.train.cond_dropout,
          "in [0, 1) (at 1 every caption is dropped and the model never learns from text)");
  require(c.train.precision == "fp32" || c.train.precision == "bf16" || c.train.precision == "fp16",
          "train.precision", c.train.precision, "fp32, bf16 or fp16");
  require(c.train.device == "cpu" || c.train.device == "cuda", "train.device", c.train.device, "cpu or cuda");
  // CPU LibTorch has no fp16 convolution kernels; bf16 is the CPU's mixed precision.
  require(c.train.precision != "fp16" || c.train.device == "cuda", "train.precision", c.train.precision,
          "bf16 or fp32 on train.device=cpu (fp16 with loss scaling needs cuda)");
  require(c.train.threads >= 1 && c.train.threads <= kMaxThreads, "train.threads", c.train.threads,
          "in [1, 1024] (torch threads per rank; more than a machine's cores only contend)");
  require(c.train.log_every >= 1, "train.log_every", c.train.log_every, ">= 1");
  require(c.train.nonfinite_patience >= 1 && c.train.nonfinite_patience <= 1000000, "train.nonfinite_patience",
          c.train.nonfinite_patience, "in [1, 1000000]");
  require(c.train.on_divergence == "rollback" || c.train.on_divergence == "stop", "train.on_divergence",
          c.train.on_divergence, "rollback or stop");
  require(c.train.max_rollbacks >= 0 && c.train.max_rollbacks <= 1000000, "train.max_rollbacks",
          c.train.max_rollbacks, "in [0, 1000000]");
  require(c.checkpoint.every >= 1, "checkpoint.every", c.checkpoint.every, ">= 1");
  require(c.checkpoint.keep >= 1 && c.checkpoint.keep <= kMaxCheckpointsKept, "checkpoint.keep", c.checkpoint.keep,
          "in [1, 1000]");
  require(c.eval.every >= 0, "eval.every", c.eval.every, ">= 0");
  require(c.eval.every == 0 || (!c.eval.extractor.empty() && !c.eval.reference.empty()), "eval.every", c.eval.every,
          "0, or eval.extractor and eval.reference set as well");
  require(c.eval.samples >= 2 && c.eval.samples <= kMaxEvalSamples, "eval.samples", c.eval.samples,
          "in [2, 1000000]");
  require(c.eval.steps >= 1 && c.eval.steps <= c.diffusion.timesteps, "eval.steps", c.eval.steps,
          "in [1, diffusion.timesteps = " + std::to_string(c.diffusion.timesteps) + "]");
  require(c.eval.guidance >= 0 && c.eval.guidance <= kMaxGuidance, "eval.guidance", c.eval.guidance,
          "in [0, 100] (0: unconditional, 1: conditional, above 1: guided)");
  require(c.eval.batch_size >= 1 && c.eval.batch_size <= kMaxBatch, "eval.batch_size", c.eval.batch_size,
          "in [1, 65536]");
  if (c.eval.every > 0 || !c.eval.prompts.empty())
    validate_memory_of("eval.batch_size", c.eval.batch_size, 2 * c.eval.batch_size, c,
                       "; sampling with guidance runs 2 x eval.batch_size images per forward");
  require(c.eval.prompts_every >= 0, "eval.prompts_every", c.eval.prompts_every, ">= 0");
  require(c.eval.prompts_every == 0 || !c.eval.prompts.empty(), "eval.prompts_every", c.eval.prompts_every,
          "0 when eval.prompts is empty (there is nothing to draw validation grids of)");
  require(c.eval.prompts_images >= 1 && c.eval.prompts_images <= kMaxPromptImages, "eval.prompts_images",
          c.eval.prompts_images, "in [1, 64]");
  require(!c.data.latents || (c.eval.every == 0 && c.eval.prompts.empty()) || !c.eval.vae_decoder.empty(),
          "eval.vae_decoder", "''",
          "a TorchScript VAE decoder with data.latents=true and eval.every > 0 or eval.prompts set: the FID point "
          "and the validation grids decode the sampled latents to images (docs/LATENTS.md)");
  require(c.monitoring.port > 0 && c.monitoring.port < 65536, "monitoring.port", c.monitoring.port,
          "in [1, 65535]");
  // An empty host would listen on every interface without anyone having said so.
  require(c.monitoring.host.find_first_not_of(" \t") != std::string::npos, "monitoring.host",
          "'" + c.monitoring.host + "'",
          "a host to listen on, given explicitly: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)");
  require(c.monitoring.pushgateway.empty() || monitoring::is_host_port(c.monitoring.pushgateway),
          "monitoring.pushgateway", "'" + c.monitoring.pushgateway + "'",
          "host:port of a Prometheus Pushgateway (e.g. 127.0.0.1:9091), or empty for no push");
  require(!c.run.name.empty() && std::none_of(c.run.name.begin(), c.run.name.end(),
                                               [](unsigned char ch) { return ch < 0x20 || ch == 0x7f; }),
          "run.name", "'" + c.run.name + "'", "a non-empty name without control characters (the metrics' run label)");
}

namespace {


// Each field's value in the form both writers need: YAML to be read back, JSON for diffs and events.
struct Rendered {
  std::function<void(YAML::Emitter&)> yaml;
  nlohmann::json json;
};

template <class Field>
Rendered render(const Field& field) {
  if constexpr (std::is_same_v<Field, std::string>) {
    // Always double-quoted: "~", "true", ": ", "#", leading spaces and newlines all read back as written.
    return {[field](YAML::Emitter& out) { out << YAML::DoubleQuoted << field; }, field};
  } else if constexpr (std::is_same_v<Field, double>) {
    const std::string text = exact_double(field);
    return {[text](YAML::Emitter& out) { out << text; }, field};
  } else if constexpr (std::is_same_v<Field, std::vector<std::string>>) {
    return {[field](YAML::Emitter& out) {
              out << YAML::Flow << YAML::BeginSeq;
              for (const auto& v : field) out << YAML::DoubleQuoted << v;
              out << YAML::EndSeq;
            },
            field};
  } else if constexpr (std::is_same_v<Field, std::vector<int64_t>>) {
    return {[field](YAML::Emitter& out) {
              out << YAML::Flow << YAML::BeginSeq;
              for (const auto& v : field) out << v;
              out << YAML::EndSeq;
            },
            field};
  } else if constexpr (std::is_same_v<Field, std::vector<double>>) {
    std::vector<std::string> texts;
    for (double v : field) texts.push_back(exact_double(v));
    return {[texts](YAML::Emitter& out) {
              out << YAML::Flow << YAML::BeginSeq;
              for (const auto& t : texts) out << t;
              out << YAML::EndSeq;
            },
            field};
  } else if constexpr (std::is_same_v<Field, bool>) {
    return {[field](YAML::Emitter& out) { out << (field ? "true" : "false"); }, field};
  } else {
    return {[field](YAML::Emitter& out) { out << field; }, field};
  }
}

}  // namespace

std::string config_to_yaml(const Config& config) {
  // Sections in order of their first key, each key under its section once.
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, Rendered>>>> sections;
  Config copy = config;
  visit_config_fields(copy, [&](const std::string& path, auto& field) {
    const auto dot = path.find('.');
    const std::string section = path.substr(0, dot), key = path.substr(dot + 1);
    auto it = std::find_if(sections.begin(), sections.end(), [&](const auto& s) { return s.first == section; });
    if (it == sections.end()) it = sections.insert(sections.end(), {section, {}});
    it->second.emplace_back(key, render(field));
  });
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const auto& [section, keys] : sections) {
    out << YAML::Key << section << YAML::Value << YAML::BeginMap;
    for (const auto& [key, value] : keys) {
      out << YAML::Key << key << YAML::Value;
      value.yaml(out);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::pair<std::string, std::string>> config_values(const Config& config) {
  std::vector<std::pair<std::string, std::string>> values;
  Config copy = config;
  visit_config_fields(copy, [&](const std::string& path, auto& field) {
    values.emplace_back(path, render(field).json.dump());
  });
  return values;
}

Config parse_saved_config(const std::string& yaml_text, const std::string& source_name,
                          std::vector<std::string>* present, std::vector<std::string>* unknown) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(source_name + ": malformed YAML at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(source_name + ": expected a YAML mapping of config sections at the top level");
  const auto keys = known_keys();
  std::vector<std::string> leaves;
  collect_leaf_paths(root, "", &leaves);
  for (const auto& leaf : leaves)
    if (auto* sink = std::find(keys.begin(), keys.end(), leaf) != keys.end() ? present : unknown) sink->push_back(leaf);
  Config config;
  visit_config_fields(config, FromYaml{root, source_name});
  return config;
}

}  // namespace difftrain
