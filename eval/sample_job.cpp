#include "eval/sample_job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "data/palette.h"
#include "eval/denoiser_source.h"
#include "eval/generate.h"
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
#include "eval/prompts.h"
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

}  // namespace

void validate_sample_options(const SampleOptions& o) {
  if (o.prompts.empty()) throw std::invalid_argument("sample: no prompts given (--prompt, --prompt-file or --synthetic-prompts)");
  for (size_t i = 0; i < o.prompts.size(); ++i) check_prompt(o.prompts[i], "prompt " + std::to_string(i + 1));
  if (o.checkpoint.empty() == o.model_file.empty())
    throw std::invalid_argument("sample: give exactly one of --checkpoint and --model");
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
  const int64_t prompts = static_cast<int64_t>(o.prompts.size());
  check_range("prompts", prompts, 1, kMaxSampleImages);
  const int64_t total = prompts * o.images_per_prompt * static_cast<int64_t>(o.guidance.size());
  if (total > kMaxSampleImages)
    throw std::invalid_argument("sample: " + std::to_string(prompts) + " prompts x --images-per-prompt " +
                                std::to_string(o.images_per_prompt) + " x " + std::to_string(o.guidance.size()) +
                                " guidance scale(s) = " + std::to_string(total) + " images: expected at most " +
                                std::to_string(kMaxSampleImages) + " per call");
}

void write_prompt_grid(const DenoiserSource& source, const std::vector<std::string>& prompts,
                       int64_t images_per_prompt, const diffusion::SamplerSpec& sampler, double guidance,
                       uint64_t seed, const std::string& path) {
  std::vector<std::string> captions;
  std::vector<uint64_t> seeds;
  for (const auto& p : prompts)
    for (int64_t k = 0; k < images_per_prompt; ++k) {
      captions.push_back(p);
      seeds.push_back(seed + seeds.size());
    }
  const auto pixels = tensor_to_images(generate_images(source, sampler, guidance, captions, seeds));
  const int64_t H = source.image_size, C = source.channels;
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
      with_precision(o.model_file.empty() ? load_checkpoint_denoiser(o.checkpoint)
                                          : load_torchscript_denoiser(o.model_file, o.image_size, o.max_tokens),
                     o.precision);
  if (o.sampler.name != "ddpm" && o.sampler.steps > source.schedule.timesteps)
    bad_option("--steps", std::to_string(o.sampler.steps),
               "at most the model's " + std::to_string(source.schedule.timesteps) + " timesteps (" +
                   source.description + ")");
  diffusion::validate(o.sampler, source.schedule);
  const int64_t steps = static_cast<int64_t>(diffusion::sampler_timesteps(o.sampler, source.schedule).size());
  const int64_t nfe = diffusion::sampler_nfe(o.sampler, source.schedule);
  const int64_t H = source.image_size, C = source.channels;
  spdlog::info("sampling {} prompts x {} images x {} guidance scale(s) with {} ({} steps, {} NFE) from {}",
               o.prompts.size(), o.images_per_prompt, o.guidance.size(), o.sampler.name, steps, nfe,
               source.description);

  fs::create_directories(o.out_dir);
  std::vector<ManifestEntry> manifest;
  SampleResult result;
  const int64_t per_scale = static_cast<int64_t>(o.prompts.size()) * o.images_per_prompt;
  const int64_t all_images = per_scale * static_cast<int64_t>(o.guidance.size());
  for (double w : o.guidance) {
    std::vector<Image> images;
    std::vector<std::string> labels;
    monitoring::RateProgress progress("sampling w=" + guidance_tag(w).substr(1), per_scale);
    for (int64_t start = 0; start < per_scale; start += o.batch_size) {
      const int64_t n = std::min(o.batch_size, per_scale - start);
      std::vector<std::string> captions;
      std::vector<uint64_t> seeds;
      for (int64_t i = start; i < start + n; ++i) {
        captions.push_back(o.prompts[i / o.images_per_prompt]);
        seeds.push_back(o.seed + static_cast<uint64_t>(i));  // the same noise for the same image at every scale
      }
      const auto pixels = tensor_to_images(generate_images(
          source, o.sampler, w, captions, seeds,
          [&](double fraction) {
            const double done = static_cast<double>(start) + fraction * static_cast<double>(n);
            progress.update(done);
            // Earlier guidance scales each finished per_scale images (one grid each).
            if (o.push) o.push->progress(static_cast<double>(result.grids.size()) * per_scale + done, all_images);
          }));
      const size_t image_bytes = static_cast<size_t>(H * H * C);
      for (int64_t k = 0; k < n; ++k) {
        Image img = image_from_hwc(pixels.data() + k * image_bytes, H, H, C);
        char name[64];
        std::snprintf(name, sizeof(name), "%s-%05lld.png", guidance_tag(w).c_str(),
                      static_cast<long long>(start + k));
        write_png((fs::path(o.out_dir) / name).string(), img);
        manifest.push_back({name, captions[k], seeds[k], o.sampler.name, steps, w});
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
