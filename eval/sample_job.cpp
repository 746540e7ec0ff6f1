#include "eval/sample_job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <stdexcept>

#include "data/palette.h"
#include "eval/denoiser_source.h"
#include "eval/generate.h"
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
#include "eval/prompt_set.h"
#include "eval/prompts.h"
#include "model/frozen_text_encoder.h"
#include "monitoring/job_push.h"
#include "monitoring/progress.h"
#include "trainer/batch_tensors.h"

namespace difftrain::eval {
namespace fs = std::filesystem;

std::vector<std::string> synthetic_prompts() {
  std::vector<std::string> prompts;
  for (const auto& c : data::palette())
    for (const auto& s : data::shape_names()) prompts.push_back(data::caption_for(c.name, s));
  return prompts;
}

namespace {

std::string guidance_tag(double w) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "w%g", w);
  return buf;
}

[[noreturn]] void bad_option(const std::string& option, const std::string& value, const std::string& expected) {
  throw std::invalid_argument("sample: " + option + " = " + value + ": expected " + expected);
}

void check_range(const std::string& option, int64_t value, int64_t min, int64_t max) {
  if (value < min || value > max)
    bad_option(option, std::to_string(value), std::to_string(min) + ".." + std::to_string(max));
}

// All images of a call, over every prompt and guidance scale.
void check_image_count(const SampleOptions& o, int64_t prompts) {
  if (prompts == 0) return;  // a prompt-embeddings file: checked once its captions are read
  check_range("prompts", prompts, 1, kMaxSampleImages);
  const int64_t total = prompts * o.images_per_prompt * static_cast<int64_t>(o.guidance.size());
  if (total > kMaxSampleImages)
    throw std::invalid_argument("sample: " + std::to_string(prompts) + " prompts x --images-per-prompt " +
                                std::to_string(o.images_per_prompt) + " x " + std::to_string(o.guidance.size()) +
                                " guidance scale(s) = " + std::to_string(total) + " images: expected at most " +
                                std::to_string(kMaxSampleImages) + " per call");
}

}  // namespace

void validate_sample_options(const SampleOptions& o) {
  if (o.prompts.empty() && o.prompt_embeddings.empty())
    throw std::invalid_argument("sample: no prompts given (--prompt, --prompt-file, --synthetic-prompts or --prompt-embeddings)");
  if (!o.prompts.empty() && !o.prompt_embeddings.empty())
    throw std::invalid_argument("sample: --prompt-embeddings " + o.prompt_embeddings +
                                " brings its own prompts (its captions): give no --prompt, --prompt-file or --synthetic-prompts with it");
  if (!o.text_encoder.empty() && !o.prompt_embeddings.empty())
    throw std::invalid_argument("sample: give --text-encoder or --prompt-embeddings, not both");
  if (!o.tokenizer.empty() && o.text_encoder.empty())
    throw std::invalid_argument("sample: --tokenizer " + o.tokenizer + " is for --text-encoder, which is not given");
  for (size_t i = 0; i < o.prompts.size(); ++i) check_prompt(o.prompts[i], "prompt " + std::to_string(i + 1));
  if (o.checkpoint.empty() == o.model_file.empty())
    throw std::invalid_argument("sample: give exactly one of --checkpoint and --model");
  if (!o.vae_decoder.empty() && o.checkpoint.empty())
    throw std::invalid_argument("sample: --vae-decoder needs --checkpoint (its config holds the latents' scale and "
                                "shift); a TorchScript denoiser file (--model) samples latents without decoding");
  if (o.guidance.empty()) throw std::invalid_argument("sample: --guidance names no scale");
  if (static_cast<int64_t>(o.guidance.size()) > kMaxGuidanceScales)
    bad_option("--guidance", std::to_string(o.guidance.size()) + " scales", "at most " + std::to_string(kMaxGuidanceScales));
  for (double w : o.guidance)
    if (!std::isfinite(w)) bad_option("--guidance", fmt::format("{}", w), "a finite number");
  if (!std::isfinite(o.sampler.eta)) bad_option("--eta", fmt::format("{}", o.sampler.eta), "a value in [0, 1]");
  check_range("--images-per-prompt", o.images_per_prompt, 1, kMaxSampleImages);
  check_range("--batch-size", o.batch_size, 1, kMaxBatchSize);
  check_range("--steps", o.sampler.steps, 1, kMaxTimesteps);
  check_range("--threads", o.threads, 1, 1024);
  check_range("--image-size", o.image_size, 0, kMaxImageSize);  // 0: not given
  check_range("--max-tokens", o.max_tokens, 0, kMaxTokens);
  check_range("upscale", o.upscale, 1, 64);
  // Each factor is at most kMaxSampleImages (prompts: a file's lines), so the product fits in int64.
  check_image_count(o, static_cast<int64_t>(o.prompts.size()));
}

PromptSet sample_prompts(const SampleOptions& o, const DenoiserSource& source) {
  if (!source.text) {
    if (!o.text_encoder.empty() || !o.prompt_embeddings.empty())
      throw std::runtime_error("sample: " + std::string(o.text_encoder.empty() ? "--prompt-embeddings" : "--text-encoder") +
                               " is for models trained on precomputed text embeddings (model.conditioning=precomputed); " +
                               source.description + " has its own text encoder and takes the prompts as text");
    return PromptSet(o.prompts);
  }
  const TextConditioning& text = *source.text;
  if (o.text_encoder.empty() && o.prompt_embeddings.empty())
    throw std::runtime_error(
        "sample: " + source.description + " was trained on precomputed text embeddings (model.conditioning=precomputed" +
        (text.encoder.empty() ? std::string() : ", model.text_encoder = \"" + text.encoder + "\"") +
        "): pass --text-encoder ENCODER.pt (the TorchScript encoder it was trained with) to embed the prompts, or "
        "--prompt-embeddings FILE.h5 (docs/CONDITIONING.md)");
  PromptEmbeddings embeddings;
  if (!o.text_encoder.empty()) {
    const model::FrozenTextEncoder encoder(o.text_encoder,
                                           model::make_text_tokenizer(o.tokenizer.empty() ? "bytes" : o.tokenizer));
    check_encoder_for_model(encoder, o.text_encoder, text);
    embeddings = encode_prompts(encoder, o.prompts, text.null_kind == "zeros" ? "zeros" : "empty", o.batch_size);
  } else {
    embeddings = read_prompt_embeddings(o.prompt_embeddings);
    for (size_t i = 0; i < embeddings.captions.size(); ++i)
      check_prompt(embeddings.captions[i], embeddings.source + ": caption " + std::to_string(i));
    check_image_count(o, embeddings.size());
  }
  resolve_for_model(embeddings, text);
  return PromptSet(std::move(embeddings));
}

void write_prompt_grid(const DenoiserSource& source, const PromptSet& prompts, int64_t images_per_prompt,
                       const diffusion::SamplerSpec& sampler, double guidance, uint64_t seed, const std::string& path) {
  std::vector<std::string> captions;
  std::vector<int64_t> indices;
  std::vector<uint64_t> seeds;
  for (size_t p = 0; p < prompts.size(); ++p)
    for (int64_t k = 0; k < images_per_prompt; ++k) {
      captions.push_back(prompts.captions[p]);
      indices.push_back(static_cast<int64_t>(p));
      seeds.push_back(seed + seeds.size());
    }
  const auto pixels = tensor_to_images(generate_prompt_images(source, sampler, guidance, prompts, indices, seeds));
  const int64_t H = output_size(source), C = output_channels(source);
  std::vector<Image> images;
  for (size_t k = 0; k < captions.size(); ++k)
    images.push_back(image_from_hwc(pixels.data() + k * static_cast<size_t>(H * H * C), H, H, C));
  fs::create_directories(fs::path(path).parent_path());
  write_png(path, make_labelled_grid(images, captions, static_cast<int>(images_per_prompt), 4));
}

SampleResult run_sample_job(const SampleOptions& o) {
  validate_sample_options(o);
  torch::set_num_threads(static_cast<int>(o.threads));
  const DenoiserSource source =
      with_precision(o.model_file.empty() ? load_checkpoint_denoiser(o.checkpoint, o.vae_decoder)
                                          : load_torchscript_denoiser(o.model_file, o.image_size, o.max_tokens),
                     o.precision);
  diffusion::SamplerSpec sampler = o.sampler;
  if (o.clip_auto)
    sampler.clip_x0 = diffusion::evaluation_spec(sampler.name, sampler.steps, sampler.eta,
                                                 diffusion::clip_by_default(source.prediction, source.latents))
                          .clip_x0;
  if (sampler.name != "ddpm" && sampler.steps > source.schedule.timesteps)
    bad_option("--steps", std::to_string(sampler.steps),
               "at most the model's " + std::to_string(source.schedule.timesteps) + " timesteps (" +
                   source.description + ")");
  diffusion::validate(sampler, source.schedule);
  const PromptSet prompts = sample_prompts(o, source);
  const int64_t steps = static_cast<int64_t>(diffusion::sampler_timesteps(sampler, source.schedule).size());
  const int64_t nfe = diffusion::sampler_nfe(sampler, source.schedule);
  const int64_t H = output_size(source), C = output_channels(source);
  spdlog::info("sampling {} prompts x {} images x {} guidance scale(s) with {} ({} steps, {} NFE) from {}",
               prompts.size(), o.images_per_prompt, o.guidance.size(), sampler.name, steps, nfe,
               source.description);

  fs::create_directories(o.out_dir);
  std::vector<ManifestEntry> manifest;
  SampleResult result;
  const int64_t per_scale = static_cast<int64_t>(prompts.size()) * o.images_per_prompt;
  // The one place images are made from prompts (a latent model's are decoded in generate_prompt_images).
  const auto make_pixels = [&](double w, const std::vector<int64_t>& indices, const std::vector<uint64_t>& seeds,
                               const std::function<void(double)>& on_step) {
    return tensor_to_images(generate_prompt_images(source, sampler, w, prompts, indices, seeds, on_step));
  };
  const int64_t all_images = per_scale * static_cast<int64_t>(o.guidance.size());
  for (double w : o.guidance) {
    std::vector<Image> images;
    std::vector<std::string> labels;
    monitoring::RateProgress progress("sampling w=" + guidance_tag(w).substr(1), per_scale);
    for (int64_t start = 0; start < per_scale; start += o.batch_size) {
      const int64_t n = std::min(o.batch_size, per_scale - start);
      std::vector<std::string> captions;
      std::vector<int64_t> indices;
      std::vector<uint64_t> seeds;
      for (int64_t i = start; i < start + n; ++i) {
        indices.push_back(i / o.images_per_prompt);
        captions.push_back(prompts.captions[static_cast<size_t>(i / o.images_per_prompt)]);
        seeds.push_back(o.seed + static_cast<uint64_t>(i));  // the same noise for the same image at every scale
      }
      const auto pixels = make_pixels(
          w, indices, seeds,
          [&](double fraction) {
            const double done = static_cast<double>(start) + fraction * static_cast<double>(n);
            progress.update(done);
            // Earlier guidance scales each finished per_scale images (one grid each).
            if (o.push) o.push->progress(static_cast<double>(result.grids.size()) * per_scale + done, all_images);
          });
      const size_t image_bytes = static_cast<size_t>(H * H * C);
      for (int64_t k = 0; k < n; ++k) {
        Image img = image_from_hwc(pixels.data() + k * image_bytes, H, H, C);
        char name[64];
        std::snprintf(name, sizeof(name), "%s-%05lld.png", guidance_tag(w).c_str(),
                      static_cast<long long>(start + k));
        write_png((fs::path(o.out_dir) / name).string(), img);
        manifest.push_back({name, captions[k], seeds[k], sampler.name, steps, w});
        images.push_back(std::move(img));
        labels.push_back(captions[k]);
      }
    }
    // Whole prompts per row, about six images wide.
    const int64_t per_row = o.images_per_prompt * std::max<int64_t>(1, 6 / o.images_per_prompt);
    const int columns = static_cast<int>(std::min<int64_t>(per_row, static_cast<int64_t>(images.size())));
    const auto grid_path = (fs::path(o.out_dir) / ("grid-" + guidance_tag(w) + ".png")).string();
    write_png(grid_path, make_labelled_grid(images, labels, columns, static_cast<int>(o.upscale)));
    result.grids.push_back(grid_path);
  }
  result.manifest = (fs::path(o.out_dir) / "manifest.jsonl").string();
  write_manifest(result.manifest, manifest);
  result.images = static_cast<int64_t>(manifest.size());
  return result;
}

}  // namespace difftrain::eval
