#include "eval/prompts.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/captions.h"
#include "data/shard_writer.h"
#include "data/shard_reader.h"
#include "eval/prompt_set.h"
#include "eval/sample_job.h"
#include "model/frozen_text_encoder.h"
#include "trainer/config.h"

namespace difftrain::eval {

void check_prompt(const std::string& prompt, const std::string& where) {
  const std::string defect = data::caption_defect(prompt);
  if (!defect.empty()) throw std::invalid_argument(where + " " + defect + " (prompts are UTF-8 text)");
}

std::vector<std::string> read_prompt_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw std::runtime_error("prompt file " + path + " is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("prompt file " + path + " cannot be opened");
  std::vector<std::string> prompts;
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    check_prompt(line, "prompt file " + path + " line " + std::to_string(number));
    prompts.push_back(line);
  }
  if (in.bad()) throw std::runtime_error("prompt file " + path + ": read error");
  if (prompts.empty()) throw std::runtime_error("prompt file " + path + " holds no prompt (one per line expected)");
  return prompts;
}

std::vector<std::string> shard_set_prompts(const std::string& dir, uint64_t seed) {
  return data::seeded_order(data::read_shard_captions(dir), seed);
}

std::vector<std::string> training_eval_prompts(const Config& config, std::string* source) {
  const uint64_t seed = static_cast<uint64_t>(config.run.seed);
  if (!config.eval.captions.empty()) {
    if (source) *source = "captions of " + config.eval.captions;
    return shard_set_prompts(config.eval.captions, seed);
  }
  if (config.data.synthetic) {
    if (source) *source = "the built-in colour x shape prompts";
    return synthetic_prompts();
  }
  if (source) *source = "captions of the training set " + config.data.dir + " (set eval.captions to a held-out split)";
  return shard_set_prompts(config.data.dir, seed);
}

namespace {

// What the model being trained conditions on: the configured shape, the shards' encoder and null
// kind (the config's, once the trainer has resolved them), and data.dir's stored null condition.
struct TrainingText {
  TextConditioning model;
  PromptEmbeddings null;  // null_* from data.dir
};

TrainingText training_text(const Config& c) {
  TrainingText t;
  const auto& m = c.model;
  t.model = TextConditioning{m.max_tokens, m.context_dim, m.pooled_dim, m.text_encoder, m.text_null,
                             "the model being trained (data.dir = " + c.data.dir + ")"};
  try {
    t.null = shard_set_prompt_embeddings(c.data.dir, 0, 1);
  } catch (const std::exception& e) {
    throw ConfigError("model.conditioning=precomputed with evaluation during training (eval.every / eval.prompts): " +
                      std::string(e.what()));
  }
  if (t.model.encoder.empty()) t.model.encoder = t.null.encoder;
  if (t.model.null_kind.empty()) t.model.null_kind = t.null.null_kind.empty() ? "empty" : t.null.null_kind;
  resolve_for_model(t.null, t.model);
  return t;
}

// e with the training null condition, checked against the model.
PromptSet with_training_null(PromptEmbeddings e, const TrainingText& t) {
  e.null_states = t.null.null_states;
  e.null_mask = t.null.null_mask;
  e.null_pooled = t.null.null_pooled;
  e.null_kind = t.null.null_kind;
  resolve_for_model(e, t.model);
  return PromptSet(std::move(e));
}

PromptEmbeddings encode_with_eval_encoder(const Config& c, const TrainingText& t, const std::vector<std::string>& prompts) {
  const model::FrozenTextEncoder encoder(c.eval.text_encoder, model::make_text_tokenizer(c.eval.text_tokenizer));
  check_encoder_for_model(encoder, c.eval.text_encoder, t.model);
  return encode_prompts(encoder, prompts, t.model.null_kind == "zeros" ? "zeros" : "empty", c.eval.batch_size);
}

}  // namespace

PromptSet training_fid_prompt_set(const Config& config, std::string* source) {
  if (config.model.conditioning != "precomputed") return PromptSet(training_eval_prompts(config, source));
  const TrainingText t = training_text(config);
  const uint64_t seed = static_cast<uint64_t>(config.run.seed);
  if (!config.eval.captions.empty()) {
    if (source) *source = "the stored embeddings of eval.captions = " + config.eval.captions;
    try {
      return with_training_null(shard_set_prompt_embeddings(config.eval.captions, seed, config.eval.samples), t);
    } catch (const std::exception& e) {
      throw ConfigError("eval.captions = " + config.eval.captions + " with model.conditioning=precomputed: " + e.what());
    }
  }
  if (config.data.synthetic && !config.eval.text_encoder.empty()) {
    if (source) *source = "the built-in colour x shape prompts embedded by eval.text_encoder";
    return with_training_null(encode_with_eval_encoder(config, t, synthetic_prompts()), t);
  }
  if (source)
    *source = "the stored embeddings of the training set " + config.data.dir + " (set eval.captions to a held-out split)";
  return with_training_null(shard_set_prompt_embeddings(config.data.dir, seed, config.eval.samples), t);
}

PromptSet training_validation_prompt_set(const Config& config) {
  if (config.model.conditioning != "precomputed") return PromptSet(config.eval.prompts);
  if (config.eval.text_encoder.empty())
    throw ConfigError("config key 'eval.prompts' with model.conditioning=precomputed needs 'eval.text_encoder': the "
                      "TorchScript text encoder the shards' embeddings were made with, to embed the validation prompts "
                      "(and 'eval.text_tokenizer' if it is not bytes)");
  const TrainingText t = training_text(config);
  try {
    return with_training_null(encode_with_eval_encoder(config, t, config.eval.prompts), t);
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError("config key 'eval.text_encoder' = " + config.eval.text_encoder + ": " + e.what());
  }
}

}  // namespace difftrain::eval
