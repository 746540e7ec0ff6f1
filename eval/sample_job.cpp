#include "eval/sample_job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

#include "data/palette.h"
#include "eval/denoiser_source.h"
#include "eval/generate.h"
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/manifest.h"
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

}  // namespace

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
  if (o.prompts.empty()) throw std::invalid_argument("sample: no prompts given");
  if (o.images_per_prompt < 1 || o.batch_size < 1) throw std::invalid_argument("sample: counts must be >= 1");
  if (o.checkpoint.empty() == o.model_file.empty())
    throw std::invalid_argument("sample: give exactly one of --checkpoint and --model");
  torch::set_num_threads(static_cast<int>(o.threads));
  const DenoiserSource source =
      with_precision(o.model_file.empty() ? load_checkpoint_denoiser(o.checkpoint)
                                          : load_torchscript_denoiser(o.model_file, o.image_size, o.max_tokens),
                     o.precision);
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
          [&](double fraction) { progress.update(static_cast<double>(start) + fraction * static_cast<double>(n)); }));
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
