// FID at reduced step counts: one point (sampler, steps, guidance) and the
// sweep over a grid of them, split across MPI ranks. Image i of a point is
// made by rank i % world from prompt i % P and seed base + i — the same image
// whatever the number of ranks or the batch size — and its features are summed
// into float64 statistics that one all-reduce combines; no image files needed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffusion/sampler_registry.h"
#include "eval/denoiser_source.h"
#include "eval/feature_extractor.h"
#include "eval/fid.h"
#include "eval/prompt_set.h"

namespace difftrain {
class Communicator;
}

namespace difftrain::monitoring {
class JobPush;
}

namespace difftrain::eval {

struct FidPoint {
  diffusion::SamplerSpec sampler;
  double guidance = 1.0;
};

struct FidPointResult {
  double fid = 0;
  int64_t nfe = 0;       // network evaluations per image (a guided step batches two)
  int64_t samples = 0;
  double seconds = 0;    // wall time of generation + features, slowest rank
};

// Collective over `comm` (nullptr: this process alone). Image i uses prompts row i % P.
FidPointResult fid_point(const DenoiserSource& source, const FidPoint& point, const PromptSet& prompts,
                         int64_t samples, uint64_t seed, int64_t batch_size, FeatureExtractor& extractor,
                         const GaussianStats& reference, Communicator* comm, bool show_progress = false);

struct SweepOptions {
  std::string checkpoint, model_file;  // one of them (eval/denoiser_source.h)
  std::string vae_decoder;             // latent models (data.latents): their TorchScript VAE decoder
  std::string extractor;               // TorchScript feature extractor
  std::string reference;               // stats .h5, shard directory or sample folder
  std::vector<std::string> samplers = {"ddpm", "ddpm-naive", "ddpm-respaced", "ddim", "dpm-solver-2",
                                       "dpm-solver-3", "dpm-solver++2m", "euler", "heun", "flow-euler",
                                       "flow-heun"};
  std::vector<int64_t> steps = {10, 25, 50};
  std::vector<double> guidance = {1.0, 3.0};
  std::vector<double> eta = {0.0};     // ddim: one point per value (its own line); other samplers take none
  int64_t samples = 500;
  uint64_t seed = 0;
  int64_t batch_size = 64;
  std::vector<std::string> prompts;    // image i uses prompts[i % P]; empty: see captions_from
  // Shard set whose captions (seeded order) are the prompts when none are given;
  // empty: the reference set's if it is a shard directory, else the built-in list.
  std::string captions_from;
  // Models trained on precomputed text embeddings (docs/CONDITIONING.md "Sampling"): the prompts above
  // embedded by this TorchScript encoder (tokenizer "" = bytes), or the prompts and their embeddings
  // from this file; with neither, the shard set of captions_from / the reference must carry embeddings.
  std::string text_encoder, tokenizer, prompt_embeddings;
  std::string out_dir;
  int64_t compare_steps = 0;           // step count of the side-by-side grid (0: the smallest in `steps`)
  int64_t compare_rows = 6;           // 0: no side-by-side grid (it runs full DDPM, the slow column)
  int64_t reference_limit = 0;         // images of the reference set used (0: all)
  std::string precision = "fp32";      // the network's: fp32 | bf16 (eval/denoiser_source.h with_precision)
  // Progress (images of finished points) and, from rank 0, each computed point's FID are pushed
  // here (--pushgateway; monitoring/job_push.h); may be null.
  monitoring::JobPush* push = nullptr;
};

// Bounds that refuse absurd requests up front.
constexpr int64_t kMaxSweepSamples = 10000000;
constexpr int64_t kMaxSweepBatch = 65536;
constexpr int64_t kMaxSweepValues = 64;  // entries of each of --samplers, --steps, --guidance, --eta

// Throws std::invalid_argument naming the option and value: an empty or too long list, a value
// listed twice, a non-finite guidance, eta outside [0, 1], steps < 1, samples outside
// 2..kMaxSweepSamples, batch size outside 1..kMaxSweepBatch, a negative compare or reference count.
// Steps beyond the model's T are refused once it is loaded (run_sweep).
void validate_sweep_options(const SweepOptions& options);

struct SweepCounts {
  int64_t reused = 0;      // stored with the same key: not recomputed
  int64_t recomputed = 0;  // stored for the same setting but made from other inputs: computed again, replaced
  int64_t added = 0;       // not stored before
};

// Writes out_dir/results.jsonl (one line per point, appended as points finish, so an
// interrupted sweep resumes), results.csv, results.json, fid_vs_nfe-w<g>.png per guidance
// scale and comparison-w<g>.png (full DDPM | naive subsampled DDPM | respaced DDPM | DDIM |
// DPM-Solver++(2M), same prompts and seeds).
// Each stored point carries `key`, a SHA-256 over everything that makes its FID: the model
// (DenoiserSource::identity), the prompts (and their embeddings and null condition for a
// precomputed-conditioning model), the reference statistics, the extractor file, N,
// seed, precision and the sampler setting (name, steps, eta, spacing, variance, clip,
// guidance). A point is reused only when its key matches; a stored point of the same setting
// with another key is recomputed and replaced. The summaries show the points made from this
// call's inputs, one line per distinct sampler setting ("ddim eta=0" and "ddim eta=1" apart).
SweepCounts run_sweep(const SweepOptions& options, Communicator* comm);

}  // namespace difftrain::eval
