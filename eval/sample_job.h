// The `sample` command: EMA weights of a checkpoint -> images for prompts with
// a chosen sampler, step count and guidance scale(s). Writes one PNG per image,
// a labelled grid per guidance scale, and manifest.jsonl beside them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffusion/sampler_registry.h"

namespace difftrain::monitoring {
class JobPush;
}

namespace difftrain::eval {

struct SampleOptions {
  std::string checkpoint;           // checkpoint dir, or run dir (its newest checkpoint) ...
  std::string model_file;           // ... or a TorchScript denoiser (eval/denoiser_source.h)
  int64_t image_size = 0;           // for TorchScript files that do not carry image_shape
  int64_t max_tokens = 0;           // for TorchScript files that do not carry max_tokens
  std::string vae_decoder;          // latent models (data.latents): their TorchScript VAE decoder (docs/LATENTS.md)
  std::string out_dir;
  std::vector<std::string> prompts;
  // Models trained on precomputed text embeddings (docs/CONDITIONING.md "Sampling"): the prompts are
  // embedded by the frozen TorchScript encoder the model was trained with (tokenizer: "bytes" or a
  // SentencePiece .model), or taken with their embeddings from a prompt-embeddings file instead of
  // `prompts` (eval/prompt_embeddings.h).
  std::string text_encoder;
  std::string tokenizer;            // "" = bytes; only with text_encoder
  std::string prompt_embeddings;
  diffusion::SamplerSpec sampler{"ddim", 25};  // diffusion/sampler_registry.h
  // `--clip auto`: sampler.clip_x0 as evaluation_spec gives it for the model (diffusion/objective.h
  // clip_by_default: off for v, x0 and flow latent models); false: sampler.clip_x0 as set (`--clip on|off`).
  bool clip_auto = false;
  std::vector<double> guidance = {3.0};
  int64_t images_per_prompt = 1;
  uint64_t seed = 0;                // image i gets seed + i
  int64_t batch_size = 64;
  int64_t threads = 2;
  int64_t upscale = 4;              // grid cells are upscaled for viewing
  std::string precision = "fp32";   // the network's: fp32 | bf16
  monitoring::JobPush* push = nullptr;  // images done pushed here as they are made (--pushgateway); may be null
};

// Bounds that refuse absurd requests up front (one call, all guidance scales together).
constexpr int64_t kMaxSampleImages = 1000000;
constexpr int64_t kMaxBatchSize = 65536;
constexpr int64_t kMaxGuidanceScales = 64;

// Throws std::invalid_argument naming the option and its value: no prompt (and no prompt_embeddings),
// prompts together with prompt_embeddings, text_encoder with prompt_embeddings, tokenizer without
// text_encoder, a prompt with a NUL
// byte or invalid UTF-8, a non-finite guidance scale, counts below 1 or past the bounds above
// (images_per_prompt x prompts x guidance scales <= kMaxSampleImages), a negative image size or
// token length. Steps beyond the model's T are refused once the model is loaded (run_sample_job).
void validate_sample_options(const SampleOptions& options);

struct SampleResult {
  std::string manifest;
  std::vector<std::string> grids;
  int64_t images = 0;
};

SampleResult run_sample_job(const SampleOptions& options);

// A labelled grid of images_per_prompt images per prompt (one row per prompt,
// image i of the grid from seed + i), written to `path` as PNG: the validation
// grids of training (eval.prompts).
struct DenoiserSource;
struct PromptSet;
void write_prompt_grid(const DenoiserSource& source, const PromptSet& prompts, int64_t images_per_prompt,
                       const diffusion::SamplerSpec& sampler, double guidance, uint64_t seed, const std::string& path);

// The prompts of `sample` for `source` (options.prompts, encoded by options.text_encoder, or the file
// options.prompt_embeddings), checked against the model. Throws std::runtime_error when they do not
// fit it: embeddings for a model with its own text encoder, none for a precomputed one, another
// encoder, shapes or null condition (eval/prompt_embeddings.h).
PromptSet sample_prompts(const SampleOptions& options, const DenoiserSource& source);

// "a <colour> <shape>" for every colour and shape of the built-in dataset.
std::vector<std::string> synthetic_prompts();

}  // namespace difftrain::eval
