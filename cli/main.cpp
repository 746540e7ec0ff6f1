// difftrain command line: a thin layer over the libraries.
//   make-data      write the built-in synthetic captioned-shapes shards
//   make-shards    convert a folder (metadata.jsonl) or CSV/TSV of captioned images to shards
//   encode-text    add precomputed text embeddings from a frozen TorchScript encoder to shards
//   train          train (under mpirun/srun: one rank per process)
//   sample         evaluation sampling from a checkpoint
//   colour-match   fraction of sampled images showing their prompt's colour
//   eval           fid-ref | fid | sweep (FID against NFE for samplers x steps x guidance)
//   export         a checkpoint's EMA model as a TorchScript denoiser
//   features       train the built-in FID feature extractor for the synthetic shapes,
//                  or (--data) a feature extractor + classifier for any labelled shard set
//   class-match    per-class accuracy of sampled images under such a classifier
//   checkpoint-info  verification of every file, step, images seen and EMA fingerprint of a checkpoint
//   autoencoder    train | export | eval the KL autoencoder of latent diffusion (docs/LATENTS.md)
//   model-info     parameter count of the configured UNet (per part), one forward/backward, export
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "cli/allocator_tuning.h"
#include "cli/autoencoder_command.h"
#include "cli/fail.h"
#include "cli/encode_images_command.h"
#include "cli/encode_text_command.h"
#include "cli/make_shards_command.h"
#include "cli/ema_reconstruct_command.h"
#include "cli/model_info_command.h"
#include "data/synthetic_shapes.h"
#include "eval/atomic_write.h"
#include "eval/class_match.h"
#include "eval/colour_match.h"
#include "eval/domain_features.h"
#include "eval/denoiser_source.h"
#include "eval/feature_extractor.h"
#include "eval/feature_net.h"
#include "eval/fid.h"
#include "eval/fid_stats_io.h"
#include "eval/fid_curves.h"
#include "eval/fid_sweep.h"
#include "eval/prompts.h"
#include "diffusion/sampler_registry.h"
#include "distributed/communicator.h"
#include "eval/sample_job.h"
#include "model/unet.h"
#include "monitoring/job_push.h"
#include "trainer/checkpoint.h"
#include "distributed/weights_agreement.h"
#include "trainer/config.h"
#include "trainer/model_options.h"
#include "distributed/mpi_session.h"
#include "trainer/autoencoder_export.h"
#include "trainer/autoencoder_trainer.h"
#include "trainer/data_identity.h"
#include "trainer/trainer.h"

namespace {

using namespace difftrain;

using cli::fail;

// The training-time FID point and validation grids. Extractor, reference and
// prompts load before training starts, so a bad path stops the run at once,
// not at the first evaluation.
TrainingHooks training_hooks(const Config& config) {
  TrainingHooks hooks;
  // A latent model's samples are decoded by eval.vae_decoder, loaded and checked once, now.
  std::optional<eval::LatentDecoder> decoder;
  if (config.data.latents && (!config.eval.prompts.empty() || config.eval.every > 0))
    decoder = eval::load_latent_decoder(config.eval.vae_decoder, config);
  const auto ema_source = [config, decoder](model::UNet& ema) {
    auto source = eval::denoiser_from_model(ema, config, "EMA weights in training");
    source.decoder = decoder;
    return source;
  };
  if (!config.eval.prompts.empty()) {
    const auto sampler = diffusion::evaluation_spec(
        config.eval.sampler, config.eval.steps, 0.0,
        diffusion::clip_by_default(diffusion::parse_prediction(config.diffusion.prediction), config.data.latents));
    // With precomputed conditioning the prompts are embedded now, by eval.text_encoder.
    auto prompts = std::make_shared<eval::PromptSet>(eval::training_validation_prompt_set(config));
    hooks.validation = [config, sampler, prompts, ema_source](model::UNet& ema, int64_t step) {
      char name[64];
      std::snprintf(name, sizeof(name), "validation/step-%07lld.png", static_cast<long long>(step));
      const auto path = (std::filesystem::path(config.run.dir) / name).string();
      eval::write_prompt_grid(ema_source(ema), *prompts,
                              config.eval.prompts_images, sampler, config.eval.guidance, 0, path);
      spdlog::info("step {}: validation grid {}", step, path);
    };
  }
  if (config.eval.every <= 0) return hooks;
  auto extractor = std::make_shared<eval::FeatureExtractor>(config.eval.extractor);
  if (!eval::is_gaussian_stats_file(config.eval.reference))
    throw std::runtime_error("config key 'eval.reference' = " + config.eval.reference +
                             ": expected a statistics file written by `difftrain eval fid-ref`");
  const auto reference = eval::load_gaussian_stats(config.eval.reference);
  std::string prompt_source;
  auto prompts = std::make_shared<eval::PromptSet>(eval::training_fid_prompt_set(config, &prompt_source));
  spdlog::info("eval: FID prompts from {} ({} prompts)", prompt_source, prompts->size());
  hooks.fid = [config, extractor, reference, prompts, ema_source](model::UNet& ema, Communicator& comm) {
    const eval::FidPoint point{diffusion::evaluation_spec(
        config.eval.sampler, config.eval.steps, 0.0,
        diffusion::clip_by_default(diffusion::parse_prediction(config.diffusion.prediction), config.data.latents)),
                               config.eval.guidance};
    const auto source = ema_source(ema);
    return eval::fid_point(source, point, *prompts, config.eval.samples, 0, config.eval.batch_size, *extractor,
                           reference, &comm)
        .fid;
  };
  return hooks;
}

int run_train(int argc, char** argv, const std::string& config_path, const std::vector<std::string>& overrides) {
  MpiSession session(&argc, &argv);
  cli::set_error_rank(session.rank(), session.world_size());
  if (session.rank() != 0) spdlog::set_level(spdlog::level::warn);
  // Failures are reported while MPI is still up, so the abort reaches every rank.
  try {
    // Resolved from the shards first: the hooks decode latents with the run's scale and shift.
    const Config config = resolve_data_identity(load_config(config_path, overrides));
    train(config, session, training_hooks(config));
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

// --pushgateway of sample / eval sweep: the job's run label is --run-name, else the name of --out.
struct PushOption {
  std::string gateway, run_name;
  std::unique_ptr<monitoring::JobPush> open(const std::string& out_dir, int rank) const {
    if (gateway.empty()) return nullptr;
    return std::make_unique<monitoring::JobPush>(
        gateway,
        monitoring::PushIdentity{run_name.empty() ? monitoring::run_name_of_dir(out_dir) : run_name,
                                 monitoring::local_hostname(), rank},
        "--pushgateway");
  }
};

void add_push_options(CLI::App& command, PushOption& option) {
  command.add_option("--pushgateway", option.gateway,
                     "host:port of a Prometheus Pushgateway: progress, results and the final state (finished or "
                     "failed) are pushed there");
  command.add_option("--run-name", option.run_name, "run label of the pushed metrics (default: the name of --out)");
}

int run_sweep_command(int argc, char** argv, eval::SweepOptions options, double timeout_seconds,
                      const PushOption& push_option) {
  MpiSession session(&argc, &argv);
  cli::set_error_rank(session.rank(), session.world_size());
  if (session.rank() != 0) spdlog::set_level(spdlog::level::warn);
  try {
    torch::set_num_threads(1);
    auto comm = make_communicator(session, torch::kCPU, {timeout_seconds});
    // Left by an exception, it pushes state failed.
    auto push = push_option.open(options.out_dir, session.rank());
    options.push = push.get();
    eval::run_sweep(options, comm.get());
    if (push) push->finish(monitoring::JobState::kFinished);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

int run_colour_match(const std::string& manifest, const std::vector<double>& guidance) {
  std::vector<std::optional<double>> filters;
  for (double w : guidance) filters.emplace_back(w);
  if (filters.empty()) filters.emplace_back(std::nullopt);
  for (const auto& f : filters) {
    const auto r = eval::colour_match(manifest, f);
    std::printf("colour match%s: %lld/%lld = %.3f\n",
                f ? (" at guidance " + std::to_string(*f).substr(0, 4)).c_str() : "",
                static_cast<long long>(r.matched), static_cast<long long>(r.total), r.fraction);
  }
  return 0;
}

void print_class_accuracies(const std::vector<eval::ClassAccuracy>& classes) {
  size_t width = 0;
  for (const auto& c : classes) width = std::max(width, std::min<size_t>(c.name.size(), 40));
  for (const auto& c : classes) {
    if (c.total == 0) continue;
    std::printf("  %-*s %lld/%lld = %.3f\n", static_cast<int>(width), c.name.c_str(), static_cast<long long>(c.correct),
                static_cast<long long>(c.total), static_cast<double>(c.correct) / static_cast<double>(c.total));
  }
}

// Options that `features` shares with the synthetic-shapes net are parsed into
// `common`; those given on the command line override the domain defaults.
int run_domain_features(eval::DomainFeatureOptions options, const eval::FeatureNetOptions& common,
                        const CLI::App& command, const std::string& out) {
  if (command.count("--image-size")) options.image_size = common.image_size;
  if (command.count("--steps")) options.steps = common.steps;
  if (command.count("--threads")) options.threads = common.threads;
  if (command.count("--batch-size")) options.batch_size = common.batch_size;
  if (command.count("--lr")) options.lr = common.lr;
  if (command.count("--seed")) options.seed = common.seed;
  const auto r = eval::train_domain_features(options, out);
  std::printf("feature extractor %s: %lld-d features, %lld classes from %s, trained at %lldx%lld (%lld channel%s) "
              "on %lld images\n",
              out.c_str(), static_cast<long long>(r.feature_dim), static_cast<long long>(r.classes),
              r.label_source.c_str(), static_cast<long long>(r.image_size), static_cast<long long>(r.image_size),
              static_cast<long long>(r.channels), r.channels == 1 ? "" : "s", static_cast<long long>(r.train_images));
  std::printf("held-out accuracy %.3f on %lld images (chance %.3f)", r.holdout_accuracy,
              static_cast<long long>(r.holdout_images), 1.0 / static_cast<double>(r.classes));
  if (r.holdout_skipped > 0) {
    std::printf("; %lld held-out images with captions unseen in training skipped",
                static_cast<long long>(r.holdout_skipped));
  }
  std::printf("\n");
  print_class_accuracies(r.per_class);
  return 0;
}

int run_class_match(const std::string& classifier_path, const std::string& manifest, const std::vector<double>& guidance,
                    const std::string& json_path) {
  eval::DomainClassifier classifier(classifier_path);
  const auto result = eval::class_match(classifier, manifest, guidance);
  for (const auto& g : result.groups) {
    std::printf("class match at guidance %g: %lld/%lld = %.3f\n", g.guidance, static_cast<long long>(g.correct),
                static_cast<long long>(g.total), g.accuracy);
    print_class_accuracies(g.per_class);
  }
  if (!json_path.empty()) {
    const std::string text = eval::class_match_json(result);
    eval::write_file_atomically(json_path, text.data(), text.size());
  }
  return 0;
}

// A run directory means its newest checkpoint, verified or not: this is where damage is diagnosed.
int run_checkpoint_info(const std::string& path) {
  const std::string dir = find_checkpoint(path);
  const auto check = verify_checkpoint(dir);
  std::printf("checkpoint %s\n", dir.c_str());
  for (const auto& f : check.files) std::printf("%s %s\n", f.name.c_str(), f.result.c_str());
  std::fflush(stdout);
  if (!check.ok()) throw CheckpointError("checkpoint '" + dir + "' does not verify: " + check.problem);
  const auto state = read_training_state(dir);
  const Config config = parse_saved_config(read_checkpoint_config(dir), dir + "/config.yaml", nullptr, nullptr);
  if (is_autoencoder_checkpoint(dir)) {  // `difftrain autoencoder train`
    std::printf("step %lld\nimages_seen %lld\nema_fingerprint %016llx\n", static_cast<long long>(state.step),
                static_cast<long long>(state.images_seen),
                static_cast<unsigned long long>(weights_fingerprint(*load_autoencoder(dir).net)));
    return 0;
  }
  model::UNet model(unet_options_from(config.model, model_input_size(config), model_input_channels(config)));
  load_ema_weights(dir, *model);
  const uint64_t ema_fp = weights_fingerprint(*model);
  std::printf("step %lld\nimages_seen %lld\nema_fingerprint %016llx\n",
              static_cast<long long>(state.step), static_cast<long long>(state.images_seen),
              static_cast<unsigned long long>(ema_fp));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  difftrain::cli::tune_allocator();
  CLI::App app{"difftrain: train and evaluate text-conditioned diffusion models"};
  app.require_subcommand(1);

  auto* make_data = app.add_subcommand("make-data", "write the built-in synthetic captioned-shapes dataset");
  std::string data_out;
  data::SyntheticSpec spec;
  make_data->add_option("--out", data_out, "shard directory")->required();
  make_data->add_option("--count", spec.count, "number of images")->check(CLI::PositiveNumber);
  make_data->add_option("--image-size", spec.image_size, "image side in pixels")->check(CLI::Range(8, 1024));
  make_data->add_option("--shard-size", spec.shard_size, "images per shard")->check(CLI::PositiveNumber);
  make_data->add_option("--seed", spec.seed, "random seed");

  const auto make_shards = cli::add_make_shards_command(app);
  const auto encode_text = cli::add_encode_text_command(app);
  const auto autoencoder = cli::add_autoencoder_command(app);
  const auto model_info = cli::add_model_info_command(app);
  const auto ema_reconstruct = cli::add_ema_reconstruct_command(app);
  const auto encode_images = cli::add_encode_images_command(app);

  auto* train = app.add_subcommand("train", "train a model (one process per rank under mpirun/srun)");
  std::string config_path;
  std::vector<std::string> overrides;
  train->add_option("--config", config_path, "YAML config (configs/); omitted = built-in defaults");
  train->add_option("overrides", overrides, "key.path=value overrides, e.g. train.max_steps=100");

  auto* sample = app.add_subcommand("sample", "sample images from a checkpoint's EMA weights");
  eval::SampleOptions so;
  bool synthetic_prompts = false;
  auto* from_checkpoint = sample->add_option("--checkpoint", so.checkpoint, "checkpoint directory or run directory");
  auto* from_model = sample->add_option("--model", so.model_file, "TorchScript denoiser (docs/EVALUATION.md)");
  from_checkpoint->excludes(from_model);
  // Given explicitly, 0 would mean "not given"; the library checks every other bound (sample_job.h).
  sample->add_option("--image-size", so.image_size, "image side, for TorchScript files without image_shape")
      ->check(CLI::Range(int64_t{1}, eval::kMaxImageSize));
  sample->add_option("--max-tokens", so.max_tokens, "token length, for TorchScript files without max_tokens")
      ->check(CLI::Range(int64_t{1}, eval::kMaxTokens));
  sample->add_option("--out", so.out_dir, "output directory")->required();
  sample->add_option("--prompt", so.prompts, "a prompt (repeatable)");
  std::string sample_prompt_file;
  sample->add_option("--prompt-file", sample_prompt_file, "a file of prompts, one per line");
  sample->add_flag("--synthetic-prompts", synthetic_prompts, "every colour x shape of the built-in dataset");
  sample->add_option("--text-encoder", so.text_encoder,
                     "precomputed-conditioning models: the TorchScript text encoder they were trained with");
  sample->add_option("--tokenizer", so.tokenizer, "with --text-encoder: bytes (default) or a SentencePiece .model");
  sample->add_option("--vae-decoder", so.vae_decoder,
                     "latent models: the TorchScript VAE decoder of their latents (docs/LATENTS.md)");
  sample->add_option("--prompt-embeddings", so.prompt_embeddings,
                     "precomputed-conditioning models: prompts with their embeddings (encode-text --prompts --out)");
  std::string clip_choice = "auto", variance = "posterior";
  sample->add_option("--sampler", so.sampler.name, "sampler")->check(CLI::IsMember(diffusion::sampler_names()));
  sample->add_option("--steps", so.sampler.steps, "sampling steps, at most T (ddpm always runs all T)");
  sample->add_option("--eta", so.sampler.eta, "ddim eta in [0, 1]");
  sample->add_option("--spacing", so.sampler.spacing, "timestep spacing (default: the sampler's own)")
      ->check(CLI::IsMember(diffusion::spacing_names()));
  sample->add_option("--variance", variance, "ddpm family: posterior (beta-tilde) or beta")
      ->check(CLI::IsMember({"posterior", "beta"}));
  sample->add_option("--clip", clip_choice, "clip predicted x0 to [-1, 1]: auto (where the sampler forms x0, for pixel models and eps-prediction latent models), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  sample->add_option("--guidance", so.guidance, "guidance scale(s) w: 1 = none, 0 = unconditional");
  sample->add_option("--images-per-prompt", so.images_per_prompt, "images per prompt (all images of a call: at most 1e6)");
  sample->add_option("--seed", so.seed, "base seed; image i uses seed + i");
  sample->add_option("--batch-size", so.batch_size, "images per forward pass");
  sample->add_option("--threads", so.threads, "torch threads");
  PushOption sample_push;
  add_push_options(*sample, sample_push);
  sample->add_option("--precision", so.precision, "network precision: fp32 or bf16 (autocast)")
      ->check(CLI::IsMember({"fp32", "bf16"}));

  auto* colour = app.add_subcommand("colour-match", "fraction of sampled images whose colour matches the prompt");
  std::string manifest;
  std::vector<double> colour_guidance;
  colour->add_option("--manifest", manifest, "manifest.jsonl written by sample")->required();
  colour->add_option("--guidance", colour_guidance, "report these guidance scales separately");

  auto* class_cmd = app.add_subcommand("class-match", "per-class accuracy of sampled images under a trained classifier");
  std::string class_classifier, class_json;
  std::vector<double> class_guidance;
  class_cmd->add_option("--classifier", class_classifier, "classifier from `features --data`")->required();
  class_cmd->add_option("--manifest", manifest, "manifest.jsonl written by sample")->required();
  class_cmd->add_option("--guidance", class_guidance, "guidance scales to report (default: each in the manifest)");
  class_cmd->add_option("--json", class_json, "also write a JSON summary here");

  auto* export_cmd = app.add_subcommand("export", "write a checkpoint's EMA model as a TorchScript denoiser");
  std::string export_checkpoint, export_out;
  export_cmd->add_option("--checkpoint", export_checkpoint, "checkpoint or run directory")->required();
  export_cmd->add_option("--out", export_out, "output .pt file")->required();

  auto* eval_cmd = app.add_subcommand("eval", "FID: reference statistics, one comparison, sampler sweeps");
  eval_cmd->require_subcommand(1);
  std::string extractor_path;
  int64_t eval_limit = 0, eval_batch = 64;

  auto* fid_ref = eval_cmd->add_subcommand("fid-ref", "feature statistics of a set, saved for later FIDs");
  std::string ref_set, ref_out;
  fid_ref->add_option("--extractor", extractor_path, "TorchScript feature extractor")->required();
  fid_ref->add_option("--data", ref_set, "shard directory or sample folder")->required();
  fid_ref->add_option("--out", ref_out, "statistics file (.h5)")->required();
  fid_ref->add_option("--limit", eval_limit, "use only the first N images (0: all)");

  auto* fid_cmd = eval_cmd->add_subcommand("fid", "FID between two sets (shards, sample folders or statistics files)");
  std::string set_a, set_b;
  fid_cmd->add_option("--extractor", extractor_path, "TorchScript feature extractor")->required();
  fid_cmd->add_option("a", set_a, "first set")->required();
  fid_cmd->add_option("b", set_b, "second set")->required();
  fid_cmd->add_option("--limit", eval_limit, "use only the first N images of each set (0: all)");

  auto* sweep = eval_cmd->add_subcommand("sweep", "FID over samplers x steps x guidance (run under mpirun to split it)");
  eval::SweepOptions sweep_options;
  auto* sweep_ckpt = sweep->add_option("--checkpoint", sweep_options.checkpoint, "checkpoint or run directory");
  sweep->add_option("--model", sweep_options.model_file, "TorchScript denoiser")->excludes(sweep_ckpt);
  sweep->add_option("--extractor", sweep_options.extractor, "TorchScript feature extractor")->required();
  sweep->add_option("--reference", sweep_options.reference, "statistics .h5, shard directory or sample folder")
      ->required();
  sweep->add_option("--samplers", sweep_options.samplers, "samplers")
      ->delimiter(',')
      ->check(CLI::IsMember(diffusion::sampler_names()));
  sweep->add_option("--steps", sweep_options.steps, "step counts")->delimiter(',');
  sweep->add_option("--guidance", sweep_options.guidance, "guidance scales")->delimiter(',');
  // Bounds are checked by eval::validate_sweep_options, with messages naming the option.
  sweep->add_option("--eta", sweep_options.eta, "ddim eta(s) in [0, 1]; each is its own line")->delimiter(',');
  sweep->add_option("--samples", sweep_options.samples, "images per point");
  sweep->add_option("--seed", sweep_options.seed, "image i uses seed + i");
  sweep->add_option("--batch-size", sweep_options.batch_size, "images per forward");
  sweep->add_option("--prompt", sweep_options.prompts,
                    "prompts, cycled (default: --captions-from, else the reference's captions if it is a shard "
                    "directory, else the built-in colour x shape set)");
  std::string sweep_prompt_file;
  sweep->add_option("--prompt-file", sweep_prompt_file, "a file of prompts, one per line, cycled");
  sweep->add_option("--captions-from", sweep_options.captions_from,
                    "shard directory whose captions, in a seeded order, are the prompts (image i, caption i)");
  sweep->add_option("--text-encoder", sweep_options.text_encoder,
                    "precomputed-conditioning models: the TorchScript text encoder they were trained with");
  sweep->add_option("--tokenizer", sweep_options.tokenizer, "with --text-encoder: bytes (default) or a SentencePiece .model");
  sweep->add_option("--vae-decoder", sweep_options.vae_decoder,
                    "latent models: the TorchScript VAE decoder of their latents (docs/LATENTS.md)");
  sweep->add_option("--prompt-embeddings", sweep_options.prompt_embeddings,
                    "precomputed-conditioning models: prompts with their embeddings (encode-text --prompts --out)");
  sweep->add_option("--out", sweep_options.out_dir, "output directory")->required();
  sweep->add_option("--compare-steps", sweep_options.compare_steps, "steps of the side-by-side grid");
  sweep->add_option("--compare-rows", sweep_options.compare_rows, "prompts in the side-by-side grid (0: no grid)");
  double sweep_timeout = 600;
  sweep->add_option("--timeout", sweep_timeout, "seconds a collective may take before the job ends with an error (default 600)")
      ->check(CLI::PositiveNumber);
  sweep->add_option("--precision", sweep_options.precision, "network precision: fp32 or bf16 (autocast)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  PushOption sweep_push;
  add_push_options(*sweep, sweep_push);
  sweep->add_option("--reference-limit", sweep_options.reference_limit, "reference images used (0: all)");

  auto* curves = eval_cmd->add_subcommand("curves", "FID against images seen of training runs (their eval.every points), "
                                                     "compared with the first run's final FID");
  std::vector<std::string> curve_runs;
  std::string curves_out, curves_title = "FID vs images seen";
  curves->add_option("--run", curve_runs, "LABEL=RUN_DIR (repeat; the first is the baseline)")->required();
  curves->add_option("--out", curves_out, "output directory (fid_vs_images.csv, .png, .md)")->required();
  curves->add_option("--title", curves_title, "plot title");

  auto* features = app.add_subcommand(
      "features", "train the built-in FID feature network for the synthetic shapes, or (--data) for a labelled shard set");
  eval::FeatureNetOptions feature_options;
  std::string features_out;
  features->add_option("--out", features_out, "output TorchScript extractor (.pt)")->required();
  features->add_option("--image-size", feature_options.image_size, "input side it is trained at");
  features->add_option("--steps", feature_options.steps, "training steps")->check(CLI::PositiveNumber);
  features->add_option("--threads", feature_options.threads, "torch threads")->check(CLI::PositiveNumber);
  features->add_option("--batch-size", feature_options.batch_size, "images per step")->check(CLI::PositiveNumber);
  features->add_option("--lr", feature_options.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  features->add_option("--seed", feature_options.seed, "random seed");
  eval::DomainFeatureOptions domain_options;
  std::string label_word = "auto";
  auto* features_data =
      features->add_option("--data", domain_options.data_dir, "train on this labelled shard directory instead");
  features->add_option("--labels", label_word, "classes: auto (labels dataset, else captions), captions, column")
      ->check(CLI::IsMember({"auto", "captions", "column"}))
      ->needs(features_data);
  features->add_option("--holdout-data", domain_options.holdout_dir, "held-out shards (default: 10% of --data)")
      ->needs(features_data);
  bool no_augment = false;
  features->add_flag("--no-augment", no_augment, "no random shifts during training")->needs(features_data);

  auto* info = app.add_subcommand("checkpoint-info", "verify a checkpoint's files; print its step and EMA weight fingerprint");
  std::string info_path;
  info->add_option("path", info_path, "checkpoint or run directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints as CLI11 does; a bad command line is one error line like every other failure.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    fail(e.what());
  }

  try {
    if (*make_data) {
      const auto paths = data::write_synthetic_shards(data_out, spec);
      std::printf("%zu shards in %s\n", paths.size(), data_out.c_str());
      return 0;
    }
    if (*make_shards->app) return cli::run_make_shards_command(argc, argv, *make_shards);
    if (*encode_text->app) return cli::run_encode_text_command(argc, argv, *encode_text);
    if (*autoencoder->app) return cli::run_autoencoder_command(argc, argv, *autoencoder);
    if (*model_info->app) return cli::run_model_info_command(*model_info);
    if (*ema_reconstruct->app) return cli::run_ema_reconstruct_command(*ema_reconstruct);
    if (*encode_images->app) return cli::run_encode_images_command(argc, argv, *encode_images);
    if (*train) return run_train(argc, argv, config_path, overrides);
    if (*sample) {
      if (!sample_prompt_file.empty()) {
        auto p = eval::read_prompt_file(sample_prompt_file);
        so.prompts.insert(so.prompts.end(), p.begin(), p.end());
      }
      if (synthetic_prompts) {
        auto p = eval::synthetic_prompts();
        so.prompts.insert(so.prompts.end(), p.begin(), p.end());
      }
      so.sampler.variance = variance == "beta" ? diffusion::DdpmVariance::kBeta : diffusion::DdpmVariance::kPosterior;
      so.sampler.clip_x0 = clip_choice == "on" || (clip_choice == "auto" && diffusion::supports_clip(so.sampler.name));
      so.clip_auto = clip_choice == "auto";
      // Left by an exception, it pushes state failed.
      auto push = sample_push.open(so.out_dir, 0);
      so.push = push.get();
      const auto result = eval::run_sample_job(so);
      if (push) push->finish(monitoring::JobState::kFinished);
      std::printf("%lld images, manifest %s\n", static_cast<long long>(result.images), result.manifest.c_str());
      for (const auto& g : result.grids) std::printf("grid %s\n", g.c_str());
      return 0;
    }
    if (*colour) return run_colour_match(manifest, colour_guidance);
    if (*class_cmd) return run_class_match(class_classifier, manifest, class_guidance, class_json);
    if (*export_cmd) {
      eval::export_denoiser(export_checkpoint, export_out);
      std::printf("TorchScript denoiser written to %s\n", export_out.c_str());
      return 0;
    }
    if (*info) return run_checkpoint_info(info_path);
    if ((*fid_ref || *fid_cmd) && eval_limit < 0)
      throw std::invalid_argument("--limit = " + std::to_string(eval_limit) + ": expected 0 (all) or a positive count");
    if (*fid_ref) {
      eval::FeatureExtractor extractor(extractor_path);
      const auto stats = eval::gaussian_stats_of(ref_set, extractor, eval_limit, eval_batch);
      eval::save_gaussian_stats(ref_out, stats);
      std::printf("statistics of %lld images (%lld-d features) written to %s\n", static_cast<long long>(stats.count),
                  static_cast<long long>(stats.mean.size(0)), ref_out.c_str());
      return 0;
    }
    if (*fid_cmd) {
      eval::FeatureExtractor extractor(extractor_path);
      const auto a = eval::gaussian_stats_of(set_a, extractor, eval_limit, eval_batch);
      const auto b = eval::gaussian_stats_of(set_b, extractor, eval_limit, eval_batch);
      std::printf("FID %.4f (%lld vs %lld images)\n", eval::frechet_distance(a, b), static_cast<long long>(a.count),
                  static_cast<long long>(b.count));
      return 0;
    }
    if (*sweep) {
      if (!sweep_prompt_file.empty()) {
        auto p = eval::read_prompt_file(sweep_prompt_file);
        sweep_options.prompts.insert(sweep_options.prompts.end(), p.begin(), p.end());
      }
      return run_sweep_command(argc, argv, sweep_options, sweep_timeout, sweep_push);
    }
    if (*curves) {
      std::vector<eval::FidCurve> read;
      for (const auto& run : curve_runs) {
        const auto eq = run.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == run.size())
          throw std::invalid_argument("--run " + run + ": expected LABEL=RUN_DIR");
        read.push_back(eval::read_fid_curve(run.substr(eq + 1), run.substr(0, eq)));
      }
      std::printf("%s", eval::write_fid_curves(read, curves_out, curves_title).c_str());
      return 0;
    }
    if (*features && !domain_options.data_dir.empty()) {
      domain_options.labels = eval::parse_label_source(label_word);
      domain_options.augment = !no_augment;
      return run_domain_features(domain_options, feature_options, *features, features_out);
    }
    if (*features) {
      const auto r = eval::train_feature_net(feature_options, features_out);
      std::printf("feature extractor %s: %lld-d features; held-out colour accuracy %.3f, shape accuracy %.3f, "
                  "centre error %.2f px\n",
                  features_out.c_str(), static_cast<long long>(r.feature_dim), r.colour_accuracy, r.shape_accuracy,
                  r.centre_rmse_pixels);
      return 0;
    }
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
