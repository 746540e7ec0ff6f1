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
  // Latent diffusion (docs/LATENTS.md): diffuse the shards' `latents` (difftrain encode-images)
  // instead of their images; image_size/channels stay the pixel geometry the latents decode to.
  bool latents = false;
  int64_t latent_channels = 4;  // c of the shards' latents (N, c, h, w)
  int64_t latent_size = 8;      // h = w of the shards' latents
  // The model diffuses z = (latents - latent_shift) * latent_scale. latent_scale 0: both are the
  // shards' latent_scale / latent_shift attributes, resolved at start-up and saved resolved.
  double latent_scale = 0;
  double latent_shift = 0;
  // The shards' latent_encoder attribute ("<file> sha256:<hex>"); empty: resolved from the shards.
  // A value that differs from the shards' is an error: the latents came from another encoder.
  std::string latent_encoder;
};

struct ModelConfig {
  int64_t base_channels = 32;
  std::vector<int64_t> channel_mults = {1, 2, 2};
  int64_t num_res_blocks = 1;
  std::vector<int64_t> attention_resolutions = {16, 8};  // self- + cross-attention at these sizes
  int64_t attention_heads = 4;
  int64_t norm_groups = 8;
  // The shape of published UNets (LDM / Stable Diffusion; configs/sd15.yaml); the defaults are this UNet's own.
  int64_t transformer_ff_mult = 0;     // > 0: GEGLU feed-forward (inner mult x C) in every attention block
  bool attention_projections = false;  // 1x1 conv proj_in / zero-initialised proj_out around attention
  bool scale_shift_norm = true;        // false: time embedding added before norm2, not scale/shift
  bool middle_attention = false;       // attention in the middle block even when its resolution is not listed
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
  // precomputed: the shards' text_encoder attribute ("<file> sha256:<hex>"), and which null condition
  // they store: "empty" (the empty caption's embedding) or "zeros". Empty: resolved from the shards at
  // start-up and saved resolved; a value that differs from the shards' is an error. Sampling checks
  // --text-encoder against it.
  std::string text_encoder;
  std::string text_null;
};

struct DiffusionConfig {
  int64_t timesteps = 1000;
  std::string schedule = "linear";  // linear | cosine | flow (rectified flow, diffusion/schedule.h)
  // SD3's timestep shift of the flow schedule (Esser et al. 2024, eq. 23): s = shift u / (1 + (shift - 1) u).
  double flow_shift = 1.0;
  // Lin et al. 2023 (arXiv 2305.08891): the schedule rescaled so alpha_bar_{T-1} = 0 (needs prediction v or x0).
  bool zero_terminal_snr = false;
  std::string prediction = "eps";   // eps | v | x0 | flow (velocity eps - x0 on x_flow, diffusion/objective.h)
  // How the training loss weighs and samples timesteps (diffusion/loss_weighting.h); training
  // choices only, so they may change on resume.
  std::string loss_weighting = "uniform";      // uniform | min_snr
  double min_snr_gamma = 5.0;                  // Min-SNR-γ's clamp (Hang et al. 2023: 5)
  std::string timestep_sampling = "uniform";   // uniform | lognormal | logit_normal
  double lognormal_mean = -1.2;                // ln σ ~ N(mean, std²) (EDM: P_mean = -1.2, P_std = 1.2)
  double lognormal_std = 1.2;
  double logit_normal_mean = 0.0;              // logit(t/T) ~ N(mean, std²) (SD3: 0 and 1)
  double logit_normal_std = 1.0;
  double offset_noise = 0.0;                   // std of a per-image, per-channel constant added to the noise
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
  // EDM2 power-function EMA profiles (trainer/power_ema.h): relative widths kept besides the EMA
  // above, snapshotted to run.dir/ema-snapshots every ema_snapshot_every steps (0: with every
  // checkpoint) for `difftrain ema-reconstruct`. Empty: none.
  std::vector<double> ema_profiles;
  int64_t ema_snapshot_every = 0;
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
  // model.conditioning=precomputed: the frozen TorchScript text encoder of the shards' embeddings
  // and its tokenizer ("bytes" or a SentencePiece .model), which the validation prompts (and FID
  // prompts without stored embeddings) are embedded with; checked against the shards' at start-up.
  std::string text_encoder;
  std::string text_tokenizer = "bytes";
  // data.latents: the TorchScript VAE decoder (docs/LATENTS.md) that turns the FID point's and the
  // validation grids' latents into images; required when either is on.
  std::string vae_decoder;
};

// The KL autoencoder of `difftrain autoencoder train` (model/autoencoder.h, docs/LATENTS.md);
// unused by `train`. The run/data/train/... sections drive its training as they drive the UNet's.
struct AutoencoderConfig {
  int64_t base_channels = 32;
  std::vector<int64_t> channel_mults = {1, 2, 2};  // one per level; downsampling factor f = 2^(levels - 1)
  int64_t num_res_blocks = 1;                      // per encoder level; the decoder has one more
  int64_t latent_channels = 4;                     // c of the (c, H/f, W/f) latents
  int64_t norm_groups = 8;
  double kl_weight = 1e-6;         // loss = reconstruction + kl_weight * KL(q(z|x) || N(0, I))
  std::string recon_loss = "l1";   // l1 | l2, per-element mean
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
  AutoencoderConfig autoencoder;
};

// Loads `path` (empty = built-in defaults), applies "key.path=value" overrides,
// rejects unknown keys, repeated keys, wrong types and 64-bit overflow naming the
// key's path, then validates: every number finite, every value in its range
// (bounds in docs/CONFIG.md), the UNet buildable with no part silently left out.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
Config parse_config_text(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides);
void validate_config(const Config& config);

// What the UNet takes: the latent geometry with data.latents, else the image geometry.
inline int64_t model_input_size(const Config& c) { return c.data.latents ? c.data.latent_size : c.data.image_size; }
inline int64_t model_input_channels(const Config& c) { return c.data.latents ? c.data.latent_channels : c.data.channels; }
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
