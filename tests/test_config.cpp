#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/test_dirs.h"
#include "trainer/config.h"
#include "trainer/config_diff.h"

using difftrain::Config;
using difftrain::ConfigError;
using difftrain::parse_config_text;

namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config_text(yaml, "exp.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Config, DefaultsAreValid) {
  const Config c = parse_config_text("", "defaults", {});
  EXPECT_EQ(c.diffusion.timesteps, 1000);
  EXPECT_DOUBLE_EQ(c.train.cond_dropout, 0.1);
}

TEST(Config, ReadsNestedKeys) {
  const Config c = parse_config_text("train:\n  batch_size: 7\n  lr: 1e-3\nmodel:\n  channel_mults: [1, 4]\n"
                                     "  attention_resolutions: [16]\n",
                                     "exp.yaml", {});
  EXPECT_EQ(c.train.batch_size, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.model.channel_mults, (std::vector<int64_t>{1, 4}));
}

TEST(Config, MalformedYamlNamesFileAndLine) {
  const auto e = error_of("train:\n  batch_size: [1, 2\n");
  EXPECT_NE(e.find("exp.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("malformed YAML at line"), std::string::npos) << e;
}

TEST(Config, UnknownKeyIsRejectedWithItsPathAndASuggestion) {
  const auto e = error_of("train:\n  batch_sise: 4\n");
  EXPECT_NE(e.find("unknown config key 'train.batch_sise'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'train.batch_size'"), std::string::npos) << e;
}

TEST(Config, UnknownSectionIsRejected) {
  EXPECT_NE(error_of("optimiser:\n  lr: 1\n").find("unknown config key 'optimiser.lr'"), std::string::npos);
}

TEST(Config, WrongTypeNamesTheKey) {
  const auto e = error_of("train:\n  batch_size: lots\n");
  EXPECT_NE(e.find("'train.batch_size' expects an integer, got 'lots'"), std::string::npos) << e;
  EXPECT_NE(error_of("monitoring:\n  enabled: 3\n").find("'monitoring.enabled' expects true or false"),
            std::string::npos);
  EXPECT_NE(error_of("model:\n  channel_mults: 2\n").find("'model.channel_mults' expects a list of integers"),
            std::string::npos);
  EXPECT_NE(error_of("train:\n  lr: [1, 2]\n").find("'train.lr' expects a number, got a list"), std::string::npos);
  // A mapping where a value belongs reads as keys below it: reported as unknown.
  EXPECT_NE(error_of("train:\n  lr: {a: 1}\n").find("unknown config key 'train.lr.a'"), std::string::npos);
}

TEST(Config, OutOfRangeValueNamesTheKey) {
  EXPECT_NE(error_of("diffusion:\n  schedule: quadratic\n").find("'diffusion.schedule' = quadratic"),
            std::string::npos);
  EXPECT_NE(error_of("train:\n  cond_dropout: 1.5\n").find("'train.cond_dropout'"), std::string::npos);
  EXPECT_NE(error_of("train:\n  precision: fp16\n").find("needs cuda"), std::string::npos);
}

TEST(Config, OverridesApplyAndAreChecked) {
  const Config c = parse_config_text("train:\n  batch_size: 7\n", "exp.yaml",
                                     {"train.batch_size=9", "model.attention_resolutions=[8]", "run.dir=/x/y"});
  EXPECT_EQ(c.train.batch_size, 9);
  EXPECT_EQ(c.model.attention_resolutions, (std::vector<int64_t>{8}));
  EXPECT_EQ(c.run.dir, "/x/y");
  EXPECT_NE(error_of("", {"train.bach_size=3"}).find("unknown config key 'train.bach_size'"), std::string::npos);
  EXPECT_NE(error_of("", {"train.batch_size"}).find("expected key.path=value"), std::string::npos);
  EXPECT_NE(error_of("", {"train.batch_size=x"}).find("'train.batch_size' expects an integer"), std::string::npos);
}

TEST(Config, ResolvedYamlRoundTrips) {
  const Config a = parse_config_text("train:\n  lr: 0.00025\nmodel:\n  channel_mults: [1, 3]\n  attention_resolutions: [16]\n",
                                     "exp.yaml", {});
  const std::string yaml = difftrain::config_to_yaml(a);
  const Config b = parse_config_text(yaml, "saved.yaml", {});
  EXPECT_EQ(difftrain::config_to_yaml(b), yaml);
  EXPECT_DOUBLE_EQ(b.train.lr, 0.00025);
  EXPECT_EQ(b.model.channel_mults, (std::vector<int64_t>{1, 3}));
}

TEST(Config, MissingFileIsNamed) {
  try {
    difftrain::load_config("/nonexistent/exp.yaml", {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/exp.yaml"), std::string::npos);
  }
}

namespace {

// Every key whose value is a floating-point number, from the schema itself.
std::vector<std::string> double_keys() {
  std::vector<std::string> keys;
  for (const auto& [key, value] : difftrain::config_values(Config{}))
    if (nlohmann::json::parse(value).is_number_float()) keys.push_back(key);
  return keys;
}

// "a.b=v" as a one-key YAML file.
std::string one_key_yaml(const std::string& key, const std::string& value) {
  const auto dot = key.find('.');
  return key.substr(0, dot) + ":\n  " + key.substr(dot + 1) + ": " + value + "\n";
}

void expect_names(const std::string& error, const std::string& what) {
  EXPECT_NE(error.find(what), std::string::npos) << "expected '" << what << "' in: " << error;
}

}  // namespace

TEST(ConfigValidation, EveryFloatKeyMustBeFinite) {
  const auto keys = double_keys();
  ASSERT_GE(keys.size(), 13u);  // model.dropout, train.lr ... eval.guidance
  for (const auto& key : keys) {
    for (const std::string bad : {"inf", "-inf", "nan", "infinity"}) {
      const auto e = error_of(one_key_yaml(key, bad));
      expect_names(e, "config key '" + key + "'");
      expect_names(e, "finite");
      expect_names(error_of("", {key + "=" + bad}), "config key '" + key + "'");
    }
    // Beyond double range: named as a number that does not fit, not a crash or a silent inf.
    expect_names(error_of(one_key_yaml(key, "1e999")), "'" + key + "' expects a number within double precision");
  }
}

TEST(ConfigValidation, AbsurdFloatsAreOutOfRangeNamingTheKey) {
  // Finite but absurd: every float key has an upper bound except grad_clip (any finite norm is a valid cap).
  for (const auto& key : double_keys()) {
    const auto e = error_of("", {key + "=1e308"});
    if (key == "train.grad_clip") {
      EXPECT_EQ(e, "") << key;
      continue;
    }
    expect_names(e, "config key '" + key + "'");
  }
  expect_names(error_of("", {"train.lr=2"}), "'train.lr' = 2: expected in (0, 1]");
  expect_names(error_of("", {"train.weight_decay=5"}), "'train.weight_decay' = 5");
  expect_names(error_of("", {"train.lr=1", "train.weight_decay=1"}), "lr * train.weight_decay < 1");
  expect_names(error_of("", {"distributed.timeout_seconds=1e9"}), "'distributed.timeout_seconds'");
  expect_names(error_of("", {"distributed.bucket_mb=1e-9"}), "'distributed.bucket_mb'");
  expect_names(error_of("", {"train.cond_dropout=1"}), "never learns from text");
  expect_names(error_of("", {"diffusion.loss_weighting=snr"}), "'diffusion.loss_weighting' = snr");
  expect_names(error_of("", {"diffusion.loss_weighting=snr"}), "uniform or min_snr");
  expect_names(error_of("", {"diffusion.timestep_sampling=logit"}), "uniform, lognormal or logit_normal");
  expect_names(error_of("", {"diffusion.min_snr_gamma=0"}), "'diffusion.min_snr_gamma' = 0");
  expect_names(error_of("", {"diffusion.offset_noise=-0.1"}), "'diffusion.offset_noise' = -0.1");
  expect_names(error_of("", {"diffusion.lognormal_std=0"}), "'diffusion.lognormal_std' = 0");
  expect_names(error_of("", {"diffusion.logit_normal_std=0"}), "'diffusion.logit_normal_std' = 0");
  expect_names(error_of("", {"diffusion.schedule=flow"}), "'diffusion.prediction' = eps");
  expect_names(error_of("", {"diffusion.schedule=flow"}), "diffusion.prediction = flow");
  expect_names(error_of("", {"diffusion.flow_shift=3"}), "1 unless diffusion.schedule = flow");
  expect_names(error_of("", {"diffusion.schedule=flow", "diffusion.prediction=flow", "diffusion.flow_shift=0"}),
               "'diffusion.flow_shift' = 0");
  expect_names(error_of("", {"diffusion.prediction=velocity"}), "eps, v, x0 or flow");
  expect_names(error_of("", {"diffusion.schedule=sigmoid"}), "linear, cosine or flow");
}

TEST(ConfigValidation, IntegerOverflowIsAnErrorNamingTheKey) {
  expect_names(error_of("train:\n  max_steps: 99999999999999999999\n"),
               "'train.max_steps' expects an integer in [-9223372036854775808, 9223372036854775807]");
  expect_names(error_of("", {"run.seed=-99999999999999999999"}), "'run.seed' expects an integer in");
  expect_names(error_of("model:\n  channel_mults: [1, 99999999999999999999]\n"),
               "'model.channel_mults' expects a list of 64-bit integers");
  // The extremes themselves are integers.
  EXPECT_EQ(parse_config_text("", "x", {"run.seed=-9223372036854775808"}).run.seed,
            std::numeric_limits<int64_t>::min());
}

TEST(ConfigValidation, ZeroAndNegativeDivisorsAreErrorsNotCrashes) {
  // Each of these was a modulo by zero (SIGFPE) or a torch error deep in model construction.
  for (const std::string key : {"model.attention_heads", "model.text_heads", "model.norm_groups"}) {
    for (const std::string value : {"0", "-2"}) {
      const auto e = error_of("", {key + "=" + value});
      expect_names(e, "config key '" + key + "' = " + value);
    }
  }
  expect_names(error_of("", {"model.base_channels=0"}), "'model.base_channels' = 0");
  expect_names(error_of("", {"model.channel_mults=[1, 0]"}), "'model.channel_mults'");
  expect_names(error_of("", {"model.channel_mults=[1, -2]"}), "'model.channel_mults'");
  // Divisors that are not zero but do not divide: named with what they must divide.
  expect_names(error_of("", {"model.attention_heads=3"}), "'model.attention_heads' = 3: expected a divisor of 64");
  expect_names(error_of("", {"model.norm_groups=8", "model.base_channels=36", "model.channel_mults=[2, 4]"}),
               "'model.norm_groups' = 8: expected a divisor of model.base_channels = 36");
  expect_names(error_of("", {"model.base_channels=33", "model.norm_groups=3", "model.attention_heads=1"}),
               "'model.base_channels' = 33: expected an even number");
  expect_names(error_of("", {"model.text_width=30"}), "'model.text_width' = 30");
}

TEST(ConfigValidation, AbsurdResourceValuesAreBounded) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train.threads", "100000"},         {"data.prefetch_batches", "1000"}, {"eval.samples", "10000000"},
      {"eval.batch_size", "100000"},       {"train.batch_size", "100000"},    {"checkpoint.keep", "1000000"},
      {"diffusion.timesteps", "1000000"},  {"data.image_size", "8192"},       {"model.base_channels", "4096"},
      {"model.num_res_blocks", "100"},     {"model.text_width", "8192"},      {"model.text_layers", "1000"},
      {"model.max_tokens", "100000"},      {"data.synthetic_count", "1000000000"},
      {"eval.prompts_images", "1000"},     {"train.grad_accum_steps", "1000000"}};
  for (const auto& [key, value] : cases) expect_names(error_of("", {key + "=" + value}), "config key '" + key + "'");
  expect_names(error_of("", {"model.channel_mults=[1, 1000]"}), "'model.channel_mults'");
  expect_names(error_of("", {"model.channel_mults=[1,1,1,1,1,1,1,1,1]", "data.image_size=512"}),
               "1 to 8 levels");
  expect_names(error_of("", {"eval.steps=2000"}), "'eval.steps' = 2000: expected in [1, diffusion.timesteps = 1000]");
  // Memory: each value alone is in range, together they ask for a 137 GB feature map.
  expect_names(error_of("", {"train.batch_size=4096", "data.image_size=512", "model.base_channels=32",
                             "model.attention_resolutions=[128]"}),
               "'train.batch_size' = 4096: expected a batch whose activations fit in memory");
  // Self-attention at full resolution: (B, heads, 32^2, 32^2) floats per block.
  expect_names(error_of("", {"train.batch_size=4096", "model.attention_resolutions=[32]"}),
               "self-attention at resolution 32");
  expect_names(error_of("", {"eval.batch_size=4096", "model.attention_resolutions=[32]", "eval.prompts=[\"a\"]"}),
               "'eval.batch_size' = 4096");
  // The shipped configurations are all inside the bounds.
  const auto configs = std::filesystem::path(__FILE__).parent_path().parent_path() / "configs";
  int shipped = 0;
  for (const auto& entry : std::filesystem::directory_iterator(configs)) {
    if (entry.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(difftrain::load_config(entry.path().string(), {})) << entry.path();
    ++shipped;
  }
  EXPECT_GE(shipped, 2);
}

TEST(ConfigValidation, AttentionResolutionsMustNameLevelsOfTheUNet) {
  // 28 px with the default levels [1, 2, 2]: 28, 14, 7. The default [16, 8] names none of them.
  const auto e = error_of("", {"data.image_size=28"});
  expect_names(e, "config key 'model.attention_resolutions' = [16, 8]");
  expect_names(e, "resolutions [28, 14, 7]");
  expect_names(error_of("", {"model.attention_resolutions=[16, 7]"}), "'model.attention_resolutions' = [16, 7]");
  expect_names(error_of("", {"model.attention_resolutions=[]"}), "without attention layers the caption");
  EXPECT_EQ(error_of("", {"data.image_size=28", "model.attention_resolutions=[14, 7]"}), "");
  // Heads need only divide the channel counts of levels that have attention.
  EXPECT_EQ(error_of("", {"model.base_channels=24", "model.norm_groups=4", "model.channel_mults=[1, 2]",
                          "model.attention_resolutions=[16]", "model.attention_heads=16"}),
            "");
}

TEST(ConfigValidation, EmptyMonitoringHostIsRejected) {
  for (const std::string host : {"\"\"", "\"  \""}) {
    const auto e = error_of("monitoring:\n  host: " + host + "\n");
    expect_names(e, "config key 'monitoring.host'");
    expect_names(e, "127.0.0.1");
    expect_names(e, "0.0.0.0");
  }
  EXPECT_EQ(parse_config_text("", "x", {"monitoring.host=0.0.0.0"}).monitoring.host, "0.0.0.0");
}

TEST(ConfigValidation, ValidationGridsNeedPrompts) {
  expect_names(error_of("", {"eval.prompts_every=100"}), "'eval.prompts_every' = 100");
  EXPECT_EQ(error_of("", {"eval.prompts_every=100", "eval.prompts=[\"a red circle\"]"}), "");
}

TEST(ConfigDuplicates, RepeatedKeysAreErrorsNamingKeyAndLines) {
  expect_names(error_of("train:\n  lr: 1e-3\n  batch_size: 4\n  lr: 2e-3\n"),
               "exp.yaml: config key 'train.lr' is given twice (lines 2 and 4)");
  // A repeated section would drop the second one's keys entirely.
  expect_names(error_of("train:\n  lr: 1e-3\nmodel:\n  dropout: 0.1\ntrain:\n  batch_size: 2\n"),
               "config key 'train' is given twice (lines 1 and 5)");
  expect_names(error_of("", {"train={lr: 1e-3, lr: 2e-3}"}), "config key 'train.lr' is given twice");
  expect_names(error_of("", {"train.lr=1e-3", "train.lr=2e-3"}),
               "override 'train.lr=2e-3': config key 'train.lr' is already set by override 'train.lr=1e-3'");
  expect_names(error_of("", {"train={lr: 1e-3}", "train.lr=2e-3"}), "already set by override 'train={lr: 1e-3}'");
}

TEST(ConfigDuplicates, AMappingOverrideSetsOnlyItsKeys) {
  const Config c = parse_config_text("train:\n  batch_size: 7\n  lr: 0.002\n", "exp.yaml", {"train={lr: 0.001}"});
  EXPECT_EQ(c.train.batch_size, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 0.001);
}

TEST(ConfigRoundTrip, EveryValueReadsBackExactly) {
  std::mt19937_64 rng(20240611);
  const std::vector<std::string> pieces = {
      "a", "runs/x", ":", ": ", " #", "#", "\"", "'", "\\", " ", "  ", "\n", "\t", "\r\n", "é", "中文", "🙂",
      "~", "null", "true", "no", "-", "- ", "? ", "[", "]", "{", "}", "&a", "*a", "!tag", "|", ">", "%", "@", "`",
      ",", "0x10", "1e3", ".inf", "---", "...", "\x01", "key=value"};
  auto odd_string = [&](bool allow_blank) {
    for (;;) {
      std::string s;
      const int n = static_cast<int>(rng() % 6);
      for (int i = 0; i < n; ++i) s += pieces[rng() % pieces.size()];
      if (allow_blank || s.find_first_not_of(" \t\r\n") != std::string::npos) return s;
    }
  };
  // Doubles spread over the whole exponent range a key allows, with random mantissas.
  auto unit_interval = [&](double low_exponent) {
    std::uniform_real_distribution<double> exponent(low_exponent, 0), mantissa(0.5, 1.0);
    return mantissa(rng) * std::pow(10.0, exponent(rng));
  };
  for (int trial = 0; trial < 500; ++trial) {
    Config a;
    a.run.dir = odd_string(true);
    // The metrics label: no control characters (its own rule), otherwise anything.
    do a.run.name = odd_string(false);
    while (std::any_of(a.run.name.begin(), a.run.name.end(), [](unsigned char ch) { return ch < 0x20 || ch == 0x7f; }));
    a.run.seed = static_cast<int64_t>(rng());
    a.data.dir = odd_string(false);
    a.monitoring.host = odd_string(false);
    a.eval.extractor = odd_string(true);
    a.eval.reference = odd_string(true);
    a.eval.captions = odd_string(true);
    a.eval.prompts.clear();
    for (int i = static_cast<int>(rng() % 4); i > 0; --i) a.eval.prompts.push_back(odd_string(true));
    a.train.lr = unit_interval(-300);
    a.train.min_lr_ratio = unit_interval(-20);
    a.train.weight_decay = unit_interval(-30);
    a.train.adam_beta2 = 1 - unit_interval(-15);
    a.train.grad_clip = unit_interval(-5) * 1e6;
    a.model.dropout = std::nextafter(1.0, 0.0) * unit_interval(-3);
    a.distributed.timeout_seconds = unit_interval(-3) * 86400;
    a.eval.guidance = trial == 0 ? 0.1 + 0.2 : unit_interval(-2) * 100;
    const std::string yaml = difftrain::config_to_yaml(a);
    Config b;
    try {
      b = parse_config_text(yaml, "saved.yaml", {});
    } catch (const std::exception& e) {
      FAIL() << e.what() << "\n" << yaml;
    }
    ASSERT_EQ(difftrain::config_values(b), difftrain::config_values(a)) << yaml;
    ASSERT_EQ(b.train.lr, a.train.lr);
    ASSERT_EQ(b.eval.prompts, a.eval.prompts);
    ASSERT_EQ(b.run.dir, a.run.dir);
  }
  // Readable where it can be: 0.1 is written as 0.1.
  Config c;
  c.train.lr = 0.1;
  EXPECT_NE(difftrain::config_to_yaml(c).find("lr: 0.1\n"), std::string::npos) << difftrain::config_to_yaml(c);
}

TEST(ConfigDiff, ClassifiesChangesAsGeometryOrRecorded) {
  Config saved;
  Config run = saved;
  run.train.lr = 1e-3;
  run.train.max_steps = 5000;
  run.train.batch_size = 64;
  run.data.random_flip = true;
  run.model.dropout = 0.1;
  run.data.image_size = 16;
  run.model.attention_resolutions = {8, 4};
  run.diffusion.prediction = "v";
  run.run.seed = 7;
  const auto changes = difftrain::diff_saved_config(difftrain::config_to_yaml(saved), "ckpt/config.yaml", run);
  std::map<std::string, difftrain::ConfigChange> by_key;
  for (const auto& c : changes) by_key[c.key] = c;
  ASSERT_EQ(by_key.size(), 9u);
  for (const std::string key : {"train.lr", "train.max_steps", "train.batch_size", "data.random_flip", "model.dropout"})
    EXPECT_FALSE(by_key.at(key).geometry) << key;
  // Recomputing activations changes memory use, not the network.
  EXPECT_FALSE(difftrain::is_geometry_key("model.checkpoint_activations"));
  for (const std::string key : {"data.image_size", "model.attention_resolutions", "diffusion.prediction", "run.seed"})
    EXPECT_TRUE(by_key.at(key).geometry) << key;
  EXPECT_EQ(by_key.at("data.image_size").checkpoint_value, "32");
  EXPECT_EQ(by_key.at("data.image_size").run_value, "16");
  EXPECT_EQ(by_key.at("model.attention_resolutions").checkpoint_value, "[16,8]");
  EXPECT_EQ(by_key.at("diffusion.prediction").run_value, "\"v\"");
  for (const std::string key : {"data.dir", "data.channels", "data.synthetic_count", "model.base_channels",
                                "model.channel_mults", "model.max_tokens", "diffusion.timesteps", "diffusion.schedule",
                                "diffusion.flow_shift"})
    EXPECT_TRUE(difftrain::is_geometry_key(key)) << key;
  for (const std::string key : {"run.dir", "data.synthetic", "data.prefetch_batches", "train.precision",
                                "train.grad_accum_steps", "eval.samples", "checkpoint.keep", "monitoring.port",
                                "diffusion.loss_weighting", "diffusion.min_snr_gamma", "diffusion.timestep_sampling",
                                "diffusion.lognormal_mean", "diffusion.lognormal_std", "diffusion.offset_noise",
                                "diffusion.logit_normal_mean", "diffusion.logit_normal_std"})
    EXPECT_FALSE(difftrain::is_geometry_key(key)) << key;
  EXPECT_TRUE(difftrain::diff_saved_config(difftrain::config_to_yaml(run), "ckpt", run).empty());
}

TEST(ConfigDiff, KeysTheCheckpointLacksAreNotDifferences) {
  Config run;
  run.train.lr = 1e-3;
  run.eval.samples = 100;     // not in the old file: the checkpoint knew no such key, so no difference
  run.model.text_layers = 4;  // likewise, even for a model key
  std::vector<std::string> unknown;
  const auto changes = difftrain::diff_saved_config("train:\n  lr: 0.0003\n  retired_key: 1\n", "old", run, &unknown);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].key, "train.lr");
  EXPECT_EQ(changes[0].checkpoint_value, "0.0003");
  EXPECT_EQ(unknown, std::vector<std::string>{"train.retired_key"});
}

TEST(ConfigDiff, OneDirectoryNamedTwoWaysIsNotAChange) {
  const auto dir = fresh_test_dir();
  std::filesystem::create_directories(dir / "data");
  Config saved, run;
  saved.data.dir = (dir / "data").string();
  run.data.dir = (dir / "." / "data" / "").string();
  EXPECT_TRUE(difftrain::diff_saved_config(difftrain::config_to_yaml(saved), "c", run).empty());
  run.data.dir = (dir / "other").string();
  const auto changes = difftrain::diff_saved_config(difftrain::config_to_yaml(saved), "c", run);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].geometry);
}

TEST(ConfigDiff, ResumeCheckRejectsGeometryAndRecordsTheRest) {
  const auto dir = fresh_test_dir();
  const auto checkpoint = dir / "run" / "checkpoints" / "step-000000010";
  std::filesystem::create_directories(checkpoint);
  Config saved;
  saved.run.dir = (dir / "run").string();
  std::ofstream(checkpoint / "config.yaml") << difftrain::config_to_yaml(saved);

  Config geometry = saved;
  geometry.data.image_size = 16;
  geometry.model.attention_resolutions = {8};
  geometry.train.lr = 1e-3;
  try {
    difftrain::check_resumed_config(geometry, checkpoint.string(), 10);
    FAIL() << "a changed image size resumed";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    expect_names(msg, "data.image_size: checkpoint has 32, this run has 16");
    expect_names(msg, "model.attention_resolutions: checkpoint has [16,8], this run has [8]");
    expect_names(msg, "use another run.dir");
    EXPECT_EQ(msg.find("train.lr"), std::string::npos) << msg;  // only what blocks the resume
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "run" / "metrics.jsonl"));

  Config tuned = saved;
  tuned.train.lr = 1e-3;
  tuned.train.max_steps = 4000;
  difftrain::check_resumed_config(tuned, checkpoint.string(), 10);
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  const auto event = nlohmann::json::parse(line);
  EXPECT_EQ(event["event"], "config_change");
  EXPECT_EQ(event["step"], 10);
  EXPECT_EQ(event["changes"]["train.lr"]["checkpoint"], 3e-4);
  EXPECT_EQ(event["changes"]["train.lr"]["run"], 1e-3);
  EXPECT_EQ(event["changes"]["train.max_steps"]["run"], 4000);
  EXPECT_EQ(event["changes"].size(), 2u);
  EXPECT_FALSE(std::getline(in, line));

  // Unchanged: nothing recorded.
  difftrain::check_resumed_config(saved, checkpoint.string(), 10);
  std::ifstream again(dir / "run" / "metrics.jsonl");
  int lines = 0;
  while (std::getline(again, line)) ++lines;
  EXPECT_EQ(lines, 1);
}

// The conditioning keys decide the UNet's inputs and weights: a change is a geometry change on resume.
TEST(ConfigDiff, ConditioningKeysAreGeometry) {
  difftrain::Config saved;
  saved.model.conditioning = "precomputed";
  saved.model.context_dim = 16;
  saved.model.pooled_dim = 8;
  difftrain::Config run = saved;
  run.model.context_dim = 32;
  run.model.pooled_dim = 0;
  const auto changes = difftrain::diff_saved_config(difftrain::config_to_yaml(saved), "ckpt/config.yaml", run);
  ASSERT_EQ(changes.size(), 2u);
  for (const auto& c : changes) {
    EXPECT_TRUE(c.key == "model.context_dim" || c.key == "model.pooled_dim") << c.key;
    EXPECT_TRUE(c.geometry) << c.key;
  }
  run = saved;
  run.model.conditioning = "builtin";
  const auto back = difftrain::diff_saved_config(difftrain::config_to_yaml(saved), "ckpt/config.yaml", run);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].key, "model.conditioning");
  EXPECT_TRUE(back[0].geometry);
}
