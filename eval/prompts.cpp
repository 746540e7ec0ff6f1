#include "eval/prompts.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/captions.h"
#include "data/shard_writer.h"
#include "eval/sample_job.h"
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

}  // namespace difftrain::eval
