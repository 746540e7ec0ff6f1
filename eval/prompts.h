// Where evaluation prompts come from: a prompt file (one per line), the
// captions of a reference shard set in a seeded order (image i with caption i),
// or the built-in colour x shape list for the synthetic data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain {
struct Config;
}

namespace difftrain::eval {

// Prompts are captions (docs/SHARD_FORMAT.md): UTF-8 without NUL bytes. Throws
// std::invalid_argument "<where> contains a NUL byte ..." / "... is not valid UTF-8".
void check_prompt(const std::string& prompt, const std::string& where);

// One prompt per line; blank lines are skipped, a trailing "\r" is dropped.
// Throws std::runtime_error naming the file when it cannot be read or holds no prompt,
// and naming the line when it holds a NUL byte or invalid UTF-8.
std::vector<std::string> read_prompt_file(const std::string& path);

// Every caption of the shard set `dir`, in the seeded order of data::seeded_order.
std::vector<std::string> shard_set_prompts(const std::string& dir, uint64_t seed);

// The prompts a training-time FID point samples with: eval.captions' captions if
// set; else the built-in list for synthetic data; else data.dir's captions.
// `source` (may be null) receives a description for the log.
std::vector<std::string> training_eval_prompts(const Config& config, std::string* source);

// The prompts of the training-time hooks as the model takes them, resolved at start-up so that a
// missing input stops the run before its first step. Builtin models: training_eval_prompts /
// eval.prompts. model.conditioning=precomputed: the FID prompts are eval.captions' stored
// embeddings (else eval.text_encoder's embeddings of the built-in list for synthetic data, else
// data.dir's), the validation prompts eval.prompts embedded by eval.text_encoder; the null
// condition is data.dir's stored one, as in training. Throws ConfigError naming the key.
struct PromptSet;
PromptSet training_fid_prompt_set(const Config& config, std::string* source);
PromptSet training_validation_prompt_set(const Config& config);

}  // namespace difftrain::eval
