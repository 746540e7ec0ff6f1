// The experiment configuration: one YAML schema, validated once at start-up,
// printed resolved and saved with every checkpoint (docs/CONFIG.md).
//
// Every key is listed once, in visit_config_fields() (config.cpp); parsing,
// unknown-key detection, printing and saving all walk that one list.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace difftrain {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct RunConfig {
  std::string dir = "runs/default";  // checkpoints/, samples/, metrics.jsonl live here
  int64_t seed = 0;
  std::string name;  // label run= of every metric; empty: the name of run.dir (resolved by parse_config_text)
};

struct DataConfig {
  std::string dir = "runs/data/shapes32";  // directory of *.h5 shards (docs/SHARD_FORMAT.md)
  // Write the built-in shapes dataset into dir when it has none. Off unless asked
  // for (configs/default.yaml), so a misspelt dir is an error, never a new dataset.
  bool synthetic = false;
  int64_t synthetic_count = 20000;
  int64_t image_size = 32;
  int64_t channels = 3;         // 1 (grey) or 3 (RGB); must match the shards
  bool random_flip = false;     // horizontal flip drawn per sample from its draw key (trainer/sample_draws)
  int64_t prefetch_batches = 4;
};

struct ModelConfig {
  int64_t base_channels = 32;
  std::vector<int64_t> channel_mults = {1, 2, 2};
  int64_t num_res_blocks = 1;
  std::vector<int64_t> attention_resolutions = {16, 8};  // self- + cross-attention at these sizes
  int64_t attention_heads = 4;
  int64_t norm_groups = 8;
  double dropout = 0.0;
  bool checkpoint_activations = false;  // recompute block activations in backward: memory, not the model
  int64_t text_width = 64;
  int64_t text_layers = 2;
  int64_t text_heads = 4;
  int64_t max_tokens = 32;  // caption bytes kept; longer captions are truncated
  // builtin: the text encoder above, trained with the UNet on caption tokens.
  // precomputed: the shards' text_states/text_mask[/text_pooled] (difftrain encode-text) of
  // shape (max_tokens, context_dim[, pooled_dim]); the text_* keys above are then unused.
  std::string conditioning = "builtin";
  int64_t context_dim = 0;  // precomputed: D of text_states
  int64_t pooled_dim = 0;   // precomputed: D' of text_pooled, 0 = the shards have none
};

struct DiffusionConfig {
  int64_t timesteps = 1000;
  std::string schedule = "linear";  // linear | cosine
  std::string prediction = "eps";   // eps | v
};

struct TrainConfig {
  int64_t batch_size = 32;  // per rank and micro-batch
  int64_t grad_accum_steps = 1;  // micro-batches per optimizer step; gradients synchronise on the last
  int64_t max_steps = 2000;
  double lr = 3e-4;
  int64_t warmup_steps = 100;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double grad_clip = 1.0;  // max global L2 norm; 0 disables
  double ema_decay = 0.999;
  double cond_dropout = 0.1;  // probability a caption is replaced by the null (empty) caption
  std::string precision = "fp32";  // fp32 | bf16 | fp16
  std::string device = "cpu";      // cpu | cuda
  int64_t threads = 1;             // torch intra-op threads per rank
  int64_t log_every = 10;
  // Non-finite guard (trainer/nonfinite_guard.h): a step whose gradients are not finite is skipped
  // and counted; after `nonfinite_patience` consecutive ones the run rolls back to the newest
  // verified checkpoint and goes on with the next data ("rollback"), at most `max_rollbacks`
  // times, or ends with an error naming the step ("stop").
  int64_t nonfinite_patience = 3;
  std::string on_divergence = "rollback";  // rollback | stop
  int64_t max_rollbacks = 3;
};

// Data-parallel training (distributed/gradient_reducer.h, distributed/mpi_worker.h).
struct DistributedConfig {
  double bucket_mb = 25;           // gradient bucket size: each bucket is all-reduced as soon as it is ready
  double first_bucket_mb = 1;      // the first bucket (last layers, ready first) is smaller, to start early
  double timeout_seconds = 600;    // a collective not complete after this ends the job, naming absent ranks
};

struct CheckpointConfig {
  int64_t every = 250;  // steps between checkpoints
  int64_t keep = 3;     // newest complete checkpoints kept
};

struct MonitoringConfig {
  bool enabled = true;
  std::string host = "127.0.0.1";
  int64_t port = 9400;  // rank with local rank r serves on port + r
  std::string pushgateway;  // "host:port" of a Prometheus Pushgateway: job state + final values pushed; empty: off
};

// A small FID point computed during training from the EMA weights (eval/fid_sweep.h).
struct EvalConfig {
  int64_t every = 0;          // steps between points; 0 disables
  std::string extractor;      // TorchScript feature extractor (eval/feature_extractor.h)
  std::string reference;      // statistics .h5, shard directory or sample folder
  int64_t samples = 256;      // images per point, split over the ranks
  std::string sampler = "ddim";
  int64_t steps = 25;
  double guidance = 3.0;
  int64_t batch_size = 64;
  // Captions the FID point samples with (image i with caption i of a seeded
  // permutation): a shard directory, normally the held-out split. Empty: the
  // built-in colour x shape prompts for synthetic data, else data.dir's captions.
  std::string captions;
  // Validation grids (diffusers' --validation_prompt): every prompts_every steps,
  // prompts_images images per prompt -> run.dir/validation/step-<step>.png.
  std::vector<std::string> prompts;
  int64_t prompts_every = 0;  // 0: only at the end of training when prompts are given
  int64_t prompts_images = 4;
};

struct Config {
  RunConfig run;
  DataConfig data;
  ModelConfig model;
  DiffusionConfig diffusion;
  TrainConfig train;
  DistributedConfig distributed;
  CheckpointConfig checkpoint;
  MonitoringConfig monitoring;
  EvalConfig eval;
};

// Loads `path` (empty = built-in defaults), applies "key.path=value" overrides,
// rejects unknown keys, repeated keys, wrong types and 64-bit overflow naming the
// key's path, then validates: every number finite, every value in its range
// (bounds in docs/CONFIG.md), the UNet buildable with no part silently left out.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
Config parse_config_text(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides);
void validate_config(const Config& config);
// Reads back exactly (parse_config_text(config_to_yaml(c)) == c): strings
// double-quoted, doubles in the shortest form that reads back as the same double.
std::string config_to_yaml(const Config& config);

// Every key with its value as compact JSON ("0.0003", "[16, 8]", "\"cpu\""), in schema order.
std::vector<std::pair<std::string, std::string>> config_values(const Config& config);
// A saved configuration (a checkpoint's config.yaml) read for comparison, not for use:
// the keys it sets are applied over the defaults, types checked, ranges not. `present`
// receives the known keys the text sets (keys added since are absent), `unknown` the rest
// (either may be null). Also how sample/export/checkpoint-info read a verified checkpoint's
// config: a model trained under an older build's rules stays usable.
Config parse_saved_config(const std::string& yaml_text, const std::string& source_name,
                          std::vector<std::string>* present, std::vector<std::string>* unknown);

}  // namespace difftrain
