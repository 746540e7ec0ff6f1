#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

namespace difftrain {
namespace {

// The one list of configuration keys. `v(path, field)` is called per key.
template <class Visitor>
void visit_config_fields(Config& c, Visitor&& v) {
  v("run.dir", c.run.dir);
  v("run.seed", c.run.seed);
  v("data.dir", c.data.dir);
  v("data.synthetic", c.data.synthetic);
  v("data.synthetic_count", c.data.synthetic_count);
  v("data.image_size", c.data.image_size);
  v("data.channels", c.data.channels);
  v("data.random_flip", c.data.random_flip);
  v("data.prefetch_batches", c.data.prefetch_batches);
  v("model.base_channels", c.model.base_channels);
  v("model.channel_mults", c.model.channel_mults);
  v("model.num_res_blocks", c.model.num_res_blocks);
  v("model.attention_resolutions", c.model.attention_resolutions);
  v("model.attention_heads", c.model.attention_heads);
  v("model.norm_groups", c.model.norm_groups);
  v("model.dropout", c.model.dropout);
  v("model.text_width", c.model.text_width);
  v("model.text_layers", c.model.text_layers);
  v("model.text_heads", c.model.text_heads);
  v("model.max_tokens", c.model.max_tokens);
  v("diffusion.timesteps", c.diffusion.timesteps);
  v("diffusion.schedule", c.diffusion.schedule);
  v("diffusion.prediction", c.diffusion.prediction);
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
  v("train.cond_dropout", c.train.cond_dropout);
  v("train.precision", c.train.precision);
  v("train.device", c.train.device);
  v("train.threads", c.train.threads);
  v("train.log_every", c.train.log_every);
  v("distributed.bucket_mb", c.distributed.bucket_mb);
  v("distributed.first_bucket_mb", c.distributed.first_bucket_mb);
  v("distributed.timeout_seconds", c.distributed.timeout_seconds);
  v("checkpoint.every", c.checkpoint.every);
  v("checkpoint.keep", c.checkpoint.keep);
  v("monitoring.enabled", c.monitoring.enabled);
  v("monitoring.host", c.monitoring.host);
  v("monitoring.port", c.monitoring.port);
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

// The whole string must be the number: "12abc" is not 12.
template <class T, class Convert>
bool parse_number(const std::string& s, T* out, Convert convert) {
  if (s.empty()) return false;
  size_t used = 0;
  try {
    *out = convert(s, &used);
  } catch (...) {
    return false;
  }
  return used == s.size();
}

bool parse_int(const std::string& s, int64_t* out) {
  return parse_number(s, out, [](const std::string& v, size_t* used) { return std::stoll(v, used); });
}

bool parse_double(const std::string& s, double* out) {
  return parse_number(s, out, [](const std::string& v, size_t* used) { return std::stod(v, used); });
}

struct FromYaml {
  const YAML::Node& root;
  const std::string& source;

  void operator()(const std::string& path, std::string& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar()) wrong_type(source, path, "a string", n);
    field = n.Scalar();
  }
  void operator()(const std::string& path, int64_t& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar() || !parse_int(n.Scalar(), &field)) wrong_type(source, path, "an integer", n);
  }
  void operator()(const std::string& path, double& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsScalar() || !parse_double(n.Scalar(), &field)) wrong_type(source, path, "a number", n);
  }
  void operator()(const std::string& path, bool& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    const std::string s = n.IsScalar() ? n.Scalar() : "";
    if (s == "true") field = true;
    else if (s == "false") field = false;
    else wrong_type(source, path, "true or false", n);
  }
  void operator()(const std::string& path, std::vector<int64_t>& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsSequence()) wrong_type(source, path, "a list of integers", n);
    field.clear();
    for (const auto& item : n) {
      int64_t value = 0;
      if (!item.IsScalar() || !parse_int(item.Scalar(), &value)) wrong_type(source, path, "a list of integers", n);
      field.push_back(value);
    }
  }
  void operator()(const std::string& path, std::vector<std::string>& field) const {
    auto n = find_node(root, path);
    if (!n.IsDefined()) return;
    if (!n.IsSequence()) wrong_type(source, path, "a list of strings", n);
    field.clear();
    for (const auto& item : n) {
      if (!item.IsScalar()) wrong_type(source, path, "a list of strings", n);
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

void apply_override(YAML::Node& root, const std::string& override_text) {
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
  const auto parts = split_path(path);
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

template <class T>
void require(bool ok, const std::string& path, const T& value, const std::string& expected) {
  if (ok) return;
  std::ostringstream os;
  os << "config key '" << path << "' = " << value << ": expected " << expected;
  throw ConfigError(os.str());
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
  reject_unknown_keys(root, source_name);
  for (const auto& o : overrides) apply_override(root, o);
  reject_unknown_keys(root, "command-line override");
  Config config;
  visit_config_fields(config, FromYaml{root, source_name});
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
  require(c.data.image_size >= 8, "data.image_size", c.data.image_size, ">= 8");
  require(c.data.synthetic_count > 0, "data.synthetic_count", c.data.synthetic_count, "> 0");
  require(c.data.prefetch_batches >= 1, "data.prefetch_batches", c.data.prefetch_batches, ">= 1");
  require(c.data.channels == 1 || c.data.channels == 3, "data.channels", c.data.channels, "1 (grey) or 3 (RGB)");
  require(!c.data.synthetic || c.data.channels == 3, "data.channels", c.data.channels,
          "3 with data.synthetic=true (the built-in shapes are RGB)");
  require(!c.data.dir.empty(), "data.dir", "''", "a directory of *.h5 shards");
  require(!c.model.channel_mults.empty(), "model.channel_mults", "[]", "a non-empty list");
  require(c.model.base_channels > 0, "model.base_channels", c.model.base_channels, "> 0");
  require(c.model.norm_groups > 0, "model.norm_groups", c.model.norm_groups, "> 0");
  for (int64_t m : c.model.channel_mults) {
    require(m > 0 && (c.model.base_channels * m) % c.model.norm_groups == 0, "model.channel_mults", m,
            "positive multipliers with base_channels * mult divisible by model.norm_groups");
    require((c.model.base_channels * m) % c.model.attention_heads == 0, "model.attention_heads",
            c.model.attention_heads, "a divisor of every level's channel count");
  }
  const int64_t downsamples = static_cast<int64_t>(c.model.channel_mults.size()) - 1;
  require(c.data.image_size % (int64_t{1} << downsamples) == 0, "data.image_size", c.data.image_size,
          "divisible by 2^(len(model.channel_mults) - 1)");
  require(c.model.num_res_blocks >= 1, "model.num_res_blocks", c.model.num_res_blocks, ">= 1");
  require(c.model.dropout >= 0 && c.model.dropout < 1, "model.dropout", c.model.dropout, "in [0, 1)");
  require(c.model.text_width > 0 && c.model.text_width % c.model.text_heads == 0, "model.text_width",
          c.model.text_width, "a positive multiple of model.text_heads");
  require(c.model.text_layers >= 0, "model.text_layers", c.model.text_layers, ">= 0");
  require(c.model.max_tokens >= 1, "model.max_tokens", c.model.max_tokens, ">= 1");
  require(c.diffusion.timesteps >= 2, "diffusion.timesteps", c.diffusion.timesteps, ">= 2");
  require(c.diffusion.schedule == "linear" || c.diffusion.schedule == "cosine", "diffusion.schedule",
          c.diffusion.schedule, "linear or cosine");
  require(c.diffusion.prediction == "eps" || c.diffusion.prediction == "v", "diffusion.prediction",
          c.diffusion.prediction, "eps or v");
  require(c.train.batch_size >= 1, "train.batch_size", c.train.batch_size, ">= 1");
  require(c.train.grad_accum_steps >= 1, "train.grad_accum_steps", c.train.grad_accum_steps, ">= 1");
  require(c.distributed.bucket_mb > 0, "distributed.bucket_mb", c.distributed.bucket_mb, "> 0");
  require(c.distributed.first_bucket_mb > 0, "distributed.first_bucket_mb", c.distributed.first_bucket_mb, "> 0");
  require(c.distributed.timeout_seconds > 0, "distributed.timeout_seconds", c.distributed.timeout_seconds, "> 0");
  require(c.train.max_steps >= 1, "train.max_steps", c.train.max_steps, ">= 1");
  require(c.train.lr > 0, "train.lr", c.train.lr, "> 0");
  require(c.train.warmup_steps >= 0, "train.warmup_steps", c.train.warmup_steps, ">= 0");
  require(c.train.min_lr_ratio >= 0 && c.train.min_lr_ratio <= 1, "train.min_lr_ratio", c.train.min_lr_ratio,
          "in [0, 1]");
  require(c.train.weight_decay >= 0, "train.weight_decay", c.train.weight_decay, ">= 0");
  require(c.train.adam_beta1 >= 0 && c.train.adam_beta1 < 1, "train.adam_beta1", c.train.adam_beta1, "in [0, 1)");
  require(c.train.adam_beta2 >= 0 && c.train.adam_beta2 < 1, "train.adam_beta2", c.train.adam_beta2, "in [0, 1)");
  require(c.train.grad_clip >= 0, "train.grad_clip", c.train.grad_clip, ">= 0");
  require(c.train.ema_decay >= 0 && c.train.ema_decay < 1, "train.ema_decay", c.train.ema_decay, "in [0, 1)");
  require(c.train.cond_dropout >= 0 && c.train.cond_dropout <= 1, "train.cond_dropout", c.train.cond_dropout,
          "in [0, 1]");
  require(c.train.precision == "fp32" || c.train.precision == "bf16" || c.train.precision == "fp16",
          "train.precision", c.train.precision, "fp32, bf16 or fp16");
  require(c.train.device == "cpu" || c.train.device == "cuda", "train.device", c.train.device, "cpu or cuda");
  // CPU LibTorch has no fp16 convolution kernels; bf16 is the CPU's mixed precision.
  require(c.train.precision != "fp16" || c.train.device == "cuda", "train.precision", c.train.precision,
          "bf16 or fp32 on train.device=cpu (fp16 with loss scaling needs cuda)");
  require(c.train.threads >= 1, "train.threads", c.train.threads, ">= 1");
  require(c.train.log_every >= 1, "train.log_every", c.train.log_every, ">= 1");
  require(c.checkpoint.every >= 1, "checkpoint.every", c.checkpoint.every, ">= 1");
  require(c.checkpoint.keep >= 1, "checkpoint.keep", c.checkpoint.keep, ">= 1");
  require(c.eval.every >= 0, "eval.every", c.eval.every, ">= 0");
  require(c.eval.every == 0 || (!c.eval.extractor.empty() && !c.eval.reference.empty()), "eval.every", c.eval.every,
          "0, or eval.extractor and eval.reference set as well");
  require(c.eval.samples >= 2, "eval.samples", c.eval.samples, ">= 2");
  require(c.eval.steps >= 1, "eval.steps", c.eval.steps, ">= 1");
  require(c.eval.batch_size >= 1, "eval.batch_size", c.eval.batch_size, ">= 1");
  require(c.eval.prompts_every >= 0, "eval.prompts_every", c.eval.prompts_every, ">= 0");
  require(c.eval.prompts_images >= 1, "eval.prompts_images", c.eval.prompts_images, ">= 1");
  require(c.monitoring.port > 0 && c.monitoring.port < 65536, "monitoring.port", c.monitoring.port,
          "in [1, 65535]");
}

std::string config_to_yaml(const Config& config) {
  YAML::Node root(YAML::NodeType::Map);
  Config copy = config;
  visit_config_fields(copy, [&](const std::string& path, auto& field) {
    const auto parts = split_path(path);
    YAML::Node section = root[parts[0]];
    using Field = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<Field, std::vector<int64_t>> || std::is_same_v<Field, std::vector<std::string>>) {
      YAML::Node list(YAML::NodeType::Sequence);
      for (const auto& v : field) list.push_back(v);
      list.SetStyle(YAML::EmitterStyle::Flow);
      section[parts[1]] = list;
    } else {
      section[parts[1]] = field;
    }
  });
  YAML::Emitter out;
  out.SetDoublePrecision(10);
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace difftrain
