#include <gtest/gtest.h>

#include "trainer/config.h"

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
  const Config c = parse_config_text("train:\n  batch_size: 7\n  lr: 1e-3\nmodel:\n  channel_mults: [1, 4]\n",
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
                                     {"train.batch_size=9", "model.attention_resolutions=[4]", "run.dir=/x/y"});
  EXPECT_EQ(c.train.batch_size, 9);
  EXPECT_EQ(c.model.attention_resolutions, (std::vector<int64_t>{4}));
  EXPECT_EQ(c.run.dir, "/x/y");
  EXPECT_NE(error_of("", {"train.bach_size=3"}).find("unknown config key 'train.bach_size'"), std::string::npos);
  EXPECT_NE(error_of("", {"train.batch_size"}).find("expected key.path=value"), std::string::npos);
  EXPECT_NE(error_of("", {"train.batch_size=x"}).find("'train.batch_size' expects an integer"), std::string::npos);
}

TEST(Config, ResolvedYamlRoundTrips) {
  const Config a = parse_config_text("train:\n  lr: 0.00025\nmodel:\n  channel_mults: [1, 3]\n", "exp.yaml", {});
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
