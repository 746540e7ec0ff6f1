// The `sample` command: EMA weights of a checkpoint -> images for prompts with
// a chosen sampler, step count and guidance scale(s). Writes one PNG per image,
// a labelled grid per guidance scale, and manifest.jsonl beside them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffusion/sampler_registry.h"

namespace difftrain::eval {

struct SampleOptions {
  std::string checkpoint;           // checkpoint dir, or run dir (its newest checkpoint) ...
  std::string model_file;           // ... or a TorchScript denoiser (eval/denoiser_source.h)
  int64_t image_size = 0;           // for TorchScript files that do not carry image_shape
  int64_t max_tokens = 0;           // for TorchScript files that do not carry max_tokens
  std::string out_dir;
  std::vector<std::string> prompts;
  diffusion::SamplerSpec sampler{"ddim", 25};  // diffusion/sampler_registry.h
  std::vector<double> guidance = {3.0};
  int64_t images_per_prompt = 1;
  uint64_t seed = 0;                // image i gets seed + i
  int64_t batch_size = 64;
  int64_t threads = 2;
  int64_t upscale = 4;              // grid cells are upscaled for viewing
  std::string precision = "fp32";   // the network's: fp32 | bf16
};

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
void write_prompt_grid(const DenoiserSource& source, const std::vector<std::string>& prompts,
                       int64_t images_per_prompt, const diffusion::SamplerSpec& sampler, double guidance,
                       uint64_t seed, const std::string& path);

// "a <colour> <shape>" for every colour and shape of the built-in dataset.
std::vector<std::string> synthetic_prompts();

}  // namespace difftrain::eval
