#include "eval/fid_sweep.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "eval/fid_stats_io.h"
#include "eval/generate.h"
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/plot.h"
#include "eval/prompts.h"
#include "monitoring/progress.h"
#include "eval/sample_job.h"
#include "trainer/batch_tensors.h"
#include "distributed/communicator.h"

namespace difftrain::eval {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Quantised as the PNGs `sample` writes, so in-memory and file-based FIDs agree;
// grey images go to the extractor as three equal channels, as their PNGs do.
torch::Tensor to_unit_range(const torch::Tensor& images) {
  auto unit = images.clamp(-1, 1).add(1).mul(127.5).round().div(255.0);
  return unit.size(1) == 1 ? unit.expand({-1, 3, -1, -1}) : unit;
}

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

std::string guidance_tag(double w) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "w%g", w);
  return buf;
}

// A point is the same only for the same model (checkpoint path or TorchScript file) and settings.
std::string point_key(const std::string& model, const std::string& sampler, int64_t steps, double guidance, double eta,
                      int64_t samples, uint64_t seed) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "|%s|%lld|%g|%g|%lld|%llu", sampler.c_str(), static_cast<long long>(steps), guidance,
                eta, static_cast<long long>(samples), static_cast<unsigned long long>(seed));
  return model + buf;
}

std::vector<nlohmann::json> read_results(const fs::path& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    try {
      rows.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // A line cut short by an interrupted run is redone.
    }
  }
  return rows;
}

std::string row_key(const nlohmann::json& r) {
  return point_key(r.value("model", ""), r.at("sampler"), r.at("steps"), r.at("guidance"), r.at("eta"), r.at("samples"),
                   r.at("seed"));
}

GaussianStats reference_stats(const SweepOptions& o, FeatureExtractor& extractor, Communicator* comm) {
  if (is_gaussian_stats_file(o.reference)) return load_gaussian_stats(o.reference);
  const auto cached = (fs::path(o.out_dir) / "reference-stats.h5").string();
  if (!comm || comm->rank() == 0) {
    spdlog::info("sweep: reference statistics of {}", o.reference);
    save_gaussian_stats(cached, gaussian_stats_of(o.reference, extractor, o.reference_limit, o.batch_size));
  }
  if (comm) comm->barrier("sweep: reference statistics written");
  return load_gaussian_stats(cached);
}

void write_summaries(const SweepOptions& o, const std::vector<nlohmann::json>& rows) {
  const fs::path dir(o.out_dir);
  {
    std::ofstream csv(dir / "results.csv");
    csv << "sampler,steps,nfe,guidance,eta,samples,seed,fid,seconds,images_per_second\n";
    for (const auto& r : rows)
      csv << r["sampler"].get<std::string>() << ',' << r["steps"] << ',' << r["nfe"] << ',' << r["guidance"] << ','
          << r["eta"] << ',' << r["samples"] << ',' << r["seed"] << ',' << r["fid"] << ',' << r["seconds"] << ','
          << r["images_per_second"] << '\n';
  }
  std::ofstream(dir / "results.json") << nlohmann::json(rows).dump(2) << "\n";
  // Every point in the folder, also those of earlier calls with other samplers,
  // guidance scales or sample counts (FID depends on N, so mixed N are labelled).
  std::set<double> scales;
  std::set<int64_t> sample_counts;
  for (const auto& r : rows) scales.insert(r["guidance"].get<double>()), sample_counts.insert(r["samples"].get<int64_t>());
  const auto series_name = [&](const nlohmann::json& r) {
    std::string name = r["sampler"].get<std::string>();
    if (sample_counts.size() > 1) name += " N=" + std::to_string(r["samples"].get<int64_t>());
    return name;
  };
  for (double w : scales) {
    std::map<std::string, PlotSeries> by_series;
    std::vector<std::string> order;  // this call's samplers first, then the rest as found
    for (const auto& name : o.samplers)
      for (const auto& r : rows)
        if (r["sampler"] == name && r["guidance"].get<double>() == w &&
            std::find(order.begin(), order.end(), series_name(r)) == order.end())
          order.push_back(series_name(r));
    for (const auto& r : rows) {
      if (r["guidance"].get<double>() != w) continue;
      const std::string name = series_name(r);
      if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
      auto& s = by_series[name];
      s.label = name;
      s.x.push_back(r["nfe"].get<double>());
      s.y.push_back(r["fid"].get<double>());
    }
    std::vector<PlotSeries> series;
    for (const auto& name : order) {
      const auto& found = by_series.at(name);
      // Sorted by NFE so the line runs left to right.
      std::vector<size_t> by_nfe(found.x.size());
      for (size_t i = 0; i < by_nfe.size(); ++i) by_nfe[i] = i;
      std::sort(by_nfe.begin(), by_nfe.end(), [&](size_t a, size_t b) { return found.x[a] < found.x[b]; });
      PlotSeries sorted{found.label, {}, {}};
      for (size_t i : by_nfe) sorted.x.push_back(found.x[i]), sorted.y.push_back(found.y[i]);
      series.push_back(sorted);
    }
    PlotOptions plot;
    plot.title = "FID vs network evaluations, guidance w = " + guidance_tag(w).substr(1);
    if (sample_counts.size() == 1) plot.title += ", N = " + std::to_string(*sample_counts.begin());
    plot.x_label = "NFE per image";
    plot.y_label = "FID";
    write_png((dir / ("fid_vs_nfe-" + guidance_tag(w) + ".png")).string(), plot_lines(series, plot));
  }
}

// Same prompts and seeds through the reference and the shortcut samplers, side by side.
void write_comparison(const SweepOptions& o, const DenoiserSource& source) {
  const int64_t n = o.compare_steps > 0 ? o.compare_steps : *std::min_element(o.steps.begin(), o.steps.end());
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"ddpm", "DDPM all T"}, {"ddpm-naive", "naive DDPM"}, {"ddpm-respaced", "respaced DDPM"},
      {"ddim", "DDIM"},      {"dpm-solver++2m", "DPM++(2M)"}};
  std::vector<std::string> captions, row_labels;
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < o.compare_rows; ++i) {
    captions.push_back(o.prompts[i % o.prompts.size()]);
    seeds.push_back(o.seed + static_cast<uint64_t>(i));
    row_labels.push_back(captions.back());
  }
  for (double w : o.guidance) {
    std::vector<std::vector<Image>> images;
    std::vector<std::string> titles;
    for (const auto& [name, title] : columns) {
      const auto spec = diffusion::evaluation_spec(name, n, o.eta);
      const auto x = generate_images(source, spec, w, captions, seeds);
      const auto pixels = tensor_to_images(x);
      const int64_t H = source.image_size, bytes = H * H * source.channels;
      std::vector<Image> column;
      for (int64_t k = 0; k < static_cast<int64_t>(captions.size()); ++k)
        column.push_back(image_from_hwc(pixels.data() + k * bytes, H, H, source.channels));
      images.push_back(std::move(column));
      titles.push_back(title + ", " + std::to_string(diffusion::sampler_nfe(spec, source.schedule)) + " NFE");
    }
    write_png((fs::path(o.out_dir) / ("comparison-" + guidance_tag(w) + ".png")).string(),
              make_comparison_grid(images, titles, row_labels, 6));
  }
}

}  // namespace

FidPointResult fid_point(const DenoiserSource& source, const FidPoint& point, const std::vector<std::string>& prompts,
                         int64_t samples, uint64_t seed, int64_t batch_size, FeatureExtractor& extractor,
                         const GaussianStats& reference, Communicator* comm, bool show_progress) {
  if (prompts.empty()) throw std::invalid_argument("FID point: no prompts");
  if (samples < 2) throw std::invalid_argument("FID point: needs at least 2 samples");
  diffusion::validate(point.sampler, source.schedule);
  const auto start = Clock::now();
  const int rank = comm ? comm->rank() : 0, world = comm ? comm->world_size() : 1;
  std::vector<int64_t> mine;
  for (int64_t i = rank; i < samples; i += world) mine.push_back(i);
  FeatureStats stats(extractor.dim());
  std::unique_ptr<monitoring::RateProgress> progress;
  if (rank == 0 && show_progress)
    progress = std::make_unique<monitoring::RateProgress>(
        "FID " + point.sampler.name + " " + std::to_string(point.sampler.steps) + " steps w=" +
            guidance_tag(point.guidance).substr(1),
        samples, 10.0);
  for (size_t begin = 0; begin < mine.size(); begin += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(mine.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::string> captions;
    std::vector<uint64_t> seeds;
    for (size_t k = begin; k < end; ++k) {
      captions.push_back(prompts[mine[k] % prompts.size()]);
      seeds.push_back(seed + static_cast<uint64_t>(mine[k]));
    }
    // Rank 0's share scaled to the whole point (the shares are equal to within one image).
    const auto report = [&](double fraction) {
      if (progress)
        progress->update(std::min(static_cast<double>(samples),
                                  (static_cast<double>(begin) + fraction * static_cast<double>(end - begin)) * world));
    };
    stats.add(extractor.features(
        to_unit_range(generate_images(source, point.sampler, point.guidance, captions, seeds, report))));
  }
  if (comm) {
    auto& buffer = stats.buffer();
    const auto summed = comm->allreduce_sum(to_vector(buffer), "FID: feature statistics");
    buffer.copy_(torch::tensor(summed, torch::kFloat64));
  }
  FidPointResult r;
  r.fid = frechet_distance(gaussian_of(stats, "samples"), reference);
  r.nfe = diffusion::sampler_nfe(point.sampler, source.schedule);
  r.samples = stats.count();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

void run_sweep(const SweepOptions& input, Communicator* comm) {
  SweepOptions o = input;
  if (o.prompts.empty()) {
    // The held-out set's own captions when the reference is a shard set.
    const bool reference_is_shards = !is_gaussian_stats_file(o.reference) && fs::is_directory(o.reference) &&
                                     !fs::exists(fs::path(o.reference) / "manifest.jsonl");
    const std::string from = !o.captions_from.empty() ? o.captions_from : reference_is_shards ? o.reference : "";
    o.prompts = from.empty() ? synthetic_prompts() : shard_set_prompts(from, o.seed);
    if (!comm || comm->rank() == 0)
      spdlog::info("sweep: prompts: {}", from.empty() ? "the built-in colour x shape list" : "captions of " + from);
  }
  if (o.steps.empty() || o.guidance.empty() || o.samplers.empty())
    throw std::invalid_argument("sweep: samplers, steps and guidance must each name at least one value");
  const bool lead = !comm || comm->rank() == 0;
  if (lead) fs::create_directories(o.out_dir);
  if (comm) comm->barrier("sweep: output directory made");
  const DenoiserSource source = with_precision(o.model_file.empty() ? load_checkpoint_denoiser(o.checkpoint)
                                                                    : load_torchscript_denoiser(o.model_file, 0, 0),
                                               o.precision);
  FeatureExtractor extractor(o.extractor);
  const GaussianStats reference = reference_stats(o, extractor, comm);

  std::vector<FidPoint> points;
  for (double w : o.guidance)
    for (const auto& name : o.samplers) {
      for (int64_t n : o.steps) {
        FidPoint p{diffusion::evaluation_spec(name, name == "ddpm" ? source.schedule.timesteps : n, o.eta), w};
        diffusion::validate(p.sampler, source.schedule);
        points.push_back(p);
        if (name == "ddpm") break;  // all T steps: one point per guidance scale
      }
    }

  const fs::path results = fs::path(o.out_dir) / "results.jsonl";
  std::set<std::string> done;
  for (const auto& r : read_results(results)) done.insert(row_key(r));
  size_t index = 0;
  for (const auto& p : points) {
    ++index;
    const auto key =
        point_key(source.description, p.sampler.name, p.sampler.steps, p.guidance, p.sampler.eta, o.samples, o.seed);
    if (done.count(key)) {
      if (lead) spdlog::info("sweep [{}/{}] {} steps={} w={}: already done", index, points.size(), p.sampler.name,
                             p.sampler.steps, p.guidance);
      continue;
    }
    const auto r = fid_point(source, p, o.prompts, o.samples, o.seed, o.batch_size, extractor, reference, comm, true);
    if (lead) {
      nlohmann::json row = {{"sampler", p.sampler.name}, {"steps", p.sampler.steps}, {"nfe", r.nfe},
                            {"guidance", p.guidance},    {"eta", p.sampler.eta},   {"samples", r.samples},
                            {"seed", o.seed},            {"fid", r.fid},           {"seconds", r.seconds},
                            {"images_per_second", static_cast<double>(r.samples) / r.seconds},
                            {"model", source.description}};
      std::ofstream(results, std::ios::app) << row.dump() << "\n";
      spdlog::info("sweep [{}/{}] {} steps={} (NFE {}) w={}: FID {:.3f} ({} images, {:.1f} s)", index, points.size(),
                   p.sampler.name, p.sampler.steps, r.nfe, p.guidance, r.fid, r.samples, r.seconds);
    }
  }
  if (lead) {
    write_summaries(o, read_results(results));
    if (o.compare_rows > 0) write_comparison(o, source);
    spdlog::info("sweep: results in {}", o.out_dir);
  }
  if (comm) comm->barrier("sweep: summaries written");
}

}  // namespace difftrain::eval
