#include "eval/fid_sweep.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>

#include "eval/atomic_write.h"
#include "eval/digest.h"
#include "eval/fid_stats_io.h"
#include "eval/generate.h"
#include "eval/grid.h"
#include "eval/image_io.h"
#include "eval/plot.h"
#include "eval/prompts.h"
#include "model/frozen_text_encoder.h"
#include "monitoring/job_push.h"
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

// What a point's FID depends on besides its sampler setting.
struct SweepInputs {
  std::string model;      // DenoiserSource::identity
  std::string prompts;    // SHA-256 of the prompt list
  std::string reference;  // SHA-256 of the reference statistics (count, mean, covariance)
  std::string extractor;  // SHA-256 of the extractor file
  uint64_t seed = 0;
};

std::string variance_name(diffusion::DdpmVariance v) {
  return v == diffusion::DdpmVariance::kBeta ? "beta" : "posterior";
}

// The sampler setting of a row (a line of the plots is this without "steps").
const char* const kSettingFields[] = {"sampler", "steps", "guidance", "eta", "spacing",
                                      "variance", "clip", "samples", "precision"};
const char* const kInputFields[] = {"seed", "model", "prompts_sha256", "reference_sha256", "extractor_sha256"};

nlohmann::json pick(const nlohmann::json& row, std::initializer_list<const char*> skip, bool inputs) {
  nlohmann::json out = nlohmann::json::object();  // keys sorted: dump() is canonical
  for (const char* f : kSettingFields)
    if (std::find_if(skip.begin(), skip.end(), [&](const char* s) { return std::string(s) == f; }) == skip.end())
      out[f] = row.value(f, nlohmann::json());
  if (inputs)
    for (const char* f : kInputFields) out[f] = row.value(f, nlohmann::json());
  return out;
}

std::string setting_of(const nlohmann::json& row) { return pick(row, {}, false).dump(); }
std::string series_of(const nlohmann::json& row) { return pick(row, {"steps"}, false).dump(); }
std::string inputs_of(const nlohmann::json& row) {
  nlohmann::json out = nlohmann::json::object();
  for (const char* f : kInputFields) out[f] = row.value(f, nlohmann::json());
  return out.dump();
}
std::string key_of(const nlohmann::json& row) { return Sha256().text(pick(row, {}, true).dump()).hex(); }

nlohmann::json point_row(const FidPoint& p, const SweepOptions& o, const SweepInputs& in) {
  nlohmann::json row = {{"sampler", p.sampler.name},
                        {"steps", p.sampler.steps},
                        {"guidance", p.guidance},
                        {"eta", p.sampler.eta},
                        {"spacing", p.sampler.spacing.empty() ? "default" : p.sampler.spacing},
                        {"variance", variance_name(p.sampler.variance)},
                        {"clip", p.sampler.clip_x0},
                        {"samples", o.samples},
                        {"precision", o.precision},
                        {"seed", in.seed},
                        {"model", in.model},
                        {"prompts_sha256", in.prompts},
                        {"reference_sha256", in.reference},
                        {"extractor_sha256", in.extractor}};
  row["key"] = key_of(row);
  return row;
}

// Rows of results.jsonl. A line cut short by an interrupted run, or one without the fields of a
// point, is dropped (and so redone). Rows written before points carried every option get that
// option's value of the time, so they fall in the same setting (and, with no key, are redone).
std::vector<nlohmann::json> parse_results(const std::string& text) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json r;
    try {
      r = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    if (!r.is_object() || !r.contains("sampler") || !r["sampler"].is_string() || !r.contains("steps") ||
        !r.contains("guidance") || !r.contains("fid") || !r.contains("nfe"))
      continue;
    if (!r.contains("eta")) r["eta"] = 0.0;
    if (!r.contains("spacing")) r["spacing"] = "default";
    if (!r.contains("variance")) r["variance"] = "posterior";
    if (!r.contains("clip")) {
      const auto names = diffusion::sampler_names();
      const auto name = r["sampler"].get<std::string>();
      r["clip"] = std::find(names.begin(), names.end(), name) != names.end() && diffusion::supports_clip(name);
    }
    if (!r.contains("precision")) r["precision"] = "fp32";
    rows.push_back(std::move(r));
  }
  return rows;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The last row of every setting, in the order those rows were written.
std::vector<nlohmann::json> latest_per_setting(const std::vector<nlohmann::json>& rows) {
  std::map<std::string, size_t> last;
  for (size_t i = 0; i < rows.size(); ++i) last[setting_of(rows[i])] = i;
  std::vector<nlohmann::json> out;
  for (size_t i = 0; i < rows.size(); ++i)
    if (last.at(setting_of(rows[i])) == i) out.push_back(rows[i]);
  return out;
}

std::string number_text(const nlohmann::json& v) {
  if (!v.is_number()) return v.dump();
  std::ostringstream out;
  out << v.get<double>();
  return out.str();
}

// "ddim eta=0", "ddim eta=1", "euler N=500 bf16": a sampler's name plus every option in which
// its lines differ (eta always for ddim), N and precision when the rows hold more than one.
std::map<std::string, std::string> series_labels(const std::vector<nlohmann::json>& rows) {
  std::map<std::string, std::map<std::string, std::set<std::string>>> per_sampler;  // name -> field -> values
  std::set<std::string> sample_counts, precisions;
  for (const auto& r : rows) {
    auto& fields = per_sampler[r["sampler"].get<std::string>()];
    for (const char* f : {"eta", "spacing", "variance", "clip"}) fields[f].insert(r[f].dump());
    sample_counts.insert(r["samples"].dump());
    precisions.insert(r["precision"].dump());
  }
  std::map<std::string, std::string> labels;
  for (const auto& r : rows) {
    const std::string name = r["sampler"].get<std::string>();
    const auto& fields = per_sampler.at(name);
    std::string label = name;
    if (name == "ddim" || fields.at("eta").size() > 1) label += " eta=" + number_text(r["eta"]);
    if (fields.at("spacing").size() > 1) label += " spacing=" + r["spacing"].get<std::string>();
    if (fields.at("variance").size() > 1) label += " variance=" + r["variance"].get<std::string>();
    if (fields.at("clip").size() > 1) label += std::string(" clip=") + (r["clip"].get<bool>() ? "on" : "off");
    if (sample_counts.size() > 1) label += " N=" + r["samples"].dump();
    if (precisions.size() > 1) label += " " + r["precision"].get<std::string>();
    labels[series_of(r)] = label;
  }
  return labels;
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

// rows: the points made from this call's inputs; each gets its line's label as "series".
void write_summaries(const SweepOptions& o, std::vector<nlohmann::json> rows) {
  const fs::path dir(o.out_dir);
  const auto labels = series_labels(rows);
  for (auto& r : rows) r["series"] = labels.at(series_of(r));
  {
    std::ofstream csv(dir / "results.csv");
    csv << "series,sampler,steps,nfe,guidance,eta,spacing,variance,clip,samples,seed,precision,fid,seconds,"
           "images_per_second,key\n";
    for (const auto& r : rows)
      csv << '"' << r["series"].get<std::string>() << "\"," << r["sampler"].get<std::string>() << ',' << r["steps"]
          << ',' << r["nfe"] << ',' << r["guidance"] << ',' << r["eta"] << ',' << r["spacing"].get<std::string>()
          << ',' << r["variance"].get<std::string>() << ',' << (r["clip"].get<bool>() ? "on" : "off") << ','
          << r["samples"] << ',' << r["seed"] << ',' << r["precision"].get<std::string>() << ',' << r["fid"] << ','
          << r.value("seconds", nlohmann::json()) << ',' << r.value("images_per_second", nlohmann::json()) << ','
          << r["key"].get<std::string>() << '\n';
  }
  std::ofstream(dir / "results.json") << nlohmann::json(rows).dump(2) << "\n";
  // Every point of these inputs in the folder, also those of earlier calls with other samplers
  // or guidance scales; one line per sampler setting, never joining points of different settings.
  std::set<double> scales;
  std::set<int64_t> sample_counts;
  for (const auto& r : rows) scales.insert(r["guidance"].get<double>()), sample_counts.insert(r["samples"].get<int64_t>());
  const auto rank_of = [&](const nlohmann::json& r) {  // this call's samplers first, in its order
    const auto it = std::find(o.samplers.begin(), o.samplers.end(), r["sampler"].get<std::string>());
    return static_cast<size_t>(it - o.samplers.begin());
  };
  for (double w : scales) {
    std::vector<std::pair<size_t, std::string>> order;  // (rank, series id) in first-seen order
    std::map<std::string, std::vector<std::pair<double, double>>> points;
    for (const auto& r : rows) {
      if (r["guidance"].get<double>() != w) continue;
      const std::string id = series_of(r);
      if (!points.count(id)) order.emplace_back(rank_of(r), id);
      points[id].emplace_back(r["nfe"].get<double>(), r["fid"].get<double>());
    }
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<PlotSeries> series;
    for (const auto& entry : order) {
      auto xy = points.at(entry.second);
      std::sort(xy.begin(), xy.end());  // by NFE, so the line runs left to right
      PlotSeries s{labels.at(entry.second), {}, {}};
      for (const auto& [x, y] : xy) s.x.push_back(x), s.y.push_back(y);
      series.push_back(std::move(s));
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
void write_comparison(const SweepOptions& o, const DenoiserSource& source, const PromptSet& prompts) {
  const int64_t n = o.compare_steps > 0 ? o.compare_steps : *std::min_element(o.steps.begin(), o.steps.end());
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"ddpm", "DDPM all T"}, {"ddpm-naive", "naive DDPM"}, {"ddpm-respaced", "respaced DDPM"},
      {"ddim", "DDIM"},      {"dpm-solver++2m", "DPM++(2M)"}};
  std::vector<std::string> row_labels;
  std::vector<int64_t> indices;
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < o.compare_rows; ++i) {
    indices.push_back(i % static_cast<int64_t>(prompts.size()));
    seeds.push_back(o.seed + static_cast<uint64_t>(i));
    row_labels.push_back(prompts.captions[static_cast<size_t>(indices.back())]);
  }
  for (double w : o.guidance) {
    std::vector<std::vector<Image>> images;
    std::vector<std::string> titles;
    for (const auto& [name, title] : columns) {
      const auto spec = diffusion::evaluation_spec(name, n, o.eta.front(),
                                                   diffusion::clip_by_default(source.prediction, source.latents));
      const auto x = generate_prompt_images(source, spec, w, prompts, indices, seeds);
      const auto pixels = tensor_to_images(x);
      const int64_t H = output_size(source), C = output_channels(source), bytes = H * H * C;
      std::vector<Image> column;
      for (int64_t k = 0; k < static_cast<int64_t>(indices.size()); ++k)
        column.push_back(image_from_hwc(pixels.data() + k * bytes, H, H, C));
      images.push_back(std::move(column));
      titles.push_back(title + ", " + std::to_string(diffusion::sampler_nfe(spec, source.schedule)) + " NFE");
    }
    write_png((fs::path(o.out_dir) / ("comparison-" + guidance_tag(w) + ".png")).string(),
              make_comparison_grid(images, titles, row_labels, 6));
  }
}

}  // namespace

FidPointResult fid_point(const DenoiserSource& source, const FidPoint& point, const PromptSet& prompts,
                         int64_t samples, uint64_t seed, int64_t batch_size, FeatureExtractor& extractor,
                         const GaussianStats& reference, Communicator* comm, bool show_progress) {
  if (prompts.size() == 0) throw std::invalid_argument("FID point: no prompts");
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
    std::vector<int64_t> indices;
    std::vector<uint64_t> seeds;
    for (size_t k = begin; k < end; ++k) {
      indices.push_back(mine[k] % static_cast<int64_t>(prompts.size()));
      seeds.push_back(seed + static_cast<uint64_t>(mine[k]));
    }
    // Rank 0's share scaled to the whole point (the shares are equal to within one image).
    const auto report = [&](double fraction) {
      if (progress)
        progress->update(std::min(static_cast<double>(samples),
                                  (static_cast<double>(begin) + fraction * static_cast<double>(end - begin)) * world));
    };
    stats.add(extractor.features(
        to_unit_range(generate_prompt_images(source, point.sampler, point.guidance, prompts, indices, seeds, report))));
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

namespace {

[[noreturn]] void bad_sweep_option(const std::string& option, const std::string& value, const std::string& expected) {
  throw std::invalid_argument("sweep: " + option + " = " + value + ": expected " + expected);
}

template <typename T>
void check_list(const std::string& option, const std::vector<T>& values) {
  if (values.empty()) bad_sweep_option(option, "(nothing)", "at least one value");
  if (static_cast<int64_t>(values.size()) > kMaxSweepValues)
    bad_sweep_option(option, std::to_string(values.size()) + " values", "at most " + std::to_string(kMaxSweepValues));
  for (size_t i = 0; i < values.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (values[i] == values[j]) bad_sweep_option(option, fmt::format("{}", values[i]), "each value once, not twice");
}

}  // namespace

void validate_sweep_options(const SweepOptions& o) {
  if (o.checkpoint.empty() == o.model_file.empty())
    throw std::invalid_argument("sweep: give exactly one of --checkpoint and --model");
  check_list("--samplers", o.samplers);
  const auto names = diffusion::sampler_names();
  for (const auto& name : o.samplers)
    if (std::find(names.begin(), names.end(), name) == names.end())
      bad_sweep_option("--samplers", name, "one of the samplers of docs/SAMPLERS.md");
  check_list("--steps", o.steps);
  for (int64_t n : o.steps)
    if (n < 1 || n > kMaxTimesteps) bad_sweep_option("--steps", std::to_string(n), "1.." + std::to_string(kMaxTimesteps));
  check_list("--guidance", o.guidance);
  for (double w : o.guidance)
    if (!std::isfinite(w)) bad_sweep_option("--guidance", fmt::format("{}", w), "a finite number");
  check_list("--eta", o.eta);
  for (double eta : o.eta)
    if (!(eta >= 0 && eta <= 1)) bad_sweep_option("--eta", fmt::format("{}", eta), "a value in [0, 1]");
  if (o.samples < 2 || o.samples > kMaxSweepSamples)
    bad_sweep_option("--samples", std::to_string(o.samples), "2.." + std::to_string(kMaxSweepSamples));
  if (o.batch_size < 1 || o.batch_size > kMaxSweepBatch)
    bad_sweep_option("--batch-size", std::to_string(o.batch_size), "1.." + std::to_string(kMaxSweepBatch));
  if (o.compare_steps < 0 || o.compare_steps > kMaxTimesteps)
    bad_sweep_option("--compare-steps", std::to_string(o.compare_steps), "0 (smallest --steps) .. " + std::to_string(kMaxTimesteps));
  if (o.compare_rows < 0 || o.compare_rows > 1000)
    bad_sweep_option("--compare-rows", std::to_string(o.compare_rows), "0..1000");
  if (o.reference_limit < 0)
    bad_sweep_option("--reference-limit", std::to_string(o.reference_limit), "0 (all) or a positive count");
  for (size_t i = 0; i < o.prompts.size(); ++i) check_prompt(o.prompts[i], "sweep: prompt " + std::to_string(i + 1));
  if (!o.prompt_embeddings.empty() && (!o.prompts.empty() || !o.captions_from.empty()))
    throw std::invalid_argument("sweep: --prompt-embeddings " + o.prompt_embeddings +
                                " brings its own prompts: give no --prompt, --prompt-file or --captions-from with it");
  if (!o.prompt_embeddings.empty() && !o.text_encoder.empty())
    throw std::invalid_argument("sweep: give --text-encoder or --prompt-embeddings, not both");
  if (!o.tokenizer.empty() && o.text_encoder.empty())
    throw std::invalid_argument("sweep: --tokenizer " + o.tokenizer + " is for --text-encoder, which is not given");
  if (o.out_dir.empty()) throw std::invalid_argument("sweep: --out names no directory");
}

namespace {

// The sweep's prompts as `source` takes them: captions for a model with its own text encoder; for a
// precomputed-conditioning one, the prompt-embeddings file, the prompts run through --text-encoder,
// or the stored embeddings of the shard set `prompts_from` the captions came from.
PromptSet sweep_prompts(const SweepOptions& o, const DenoiserSource& source, const std::string& prompts_from) {
  if (!source.text) {
    if (!o.text_encoder.empty() || !o.prompt_embeddings.empty())
      throw std::invalid_argument("sweep: " +
                                  std::string(o.text_encoder.empty() ? "--prompt-embeddings" : "--text-encoder") +
                                  " is for models trained on precomputed text embeddings "
                                  "(model.conditioning=precomputed); " +
                                  source.description + " has its own text encoder");
    return PromptSet(o.prompts);
  }
  const TextConditioning& text = *source.text;
  PromptEmbeddings e;
  if (!o.prompt_embeddings.empty()) {
    e = read_prompt_embeddings(o.prompt_embeddings);
    for (size_t i = 0; i < e.captions.size(); ++i)
      check_prompt(e.captions[i], "sweep: " + e.source + ": caption " + std::to_string(i));
  } else if (!o.text_encoder.empty()) {
    const model::FrozenTextEncoder encoder(o.text_encoder,
                                           model::make_text_tokenizer(o.tokenizer.empty() ? "bytes" : o.tokenizer));
    check_encoder_for_model(encoder, o.text_encoder, text);
    e = encode_prompts(encoder, o.prompts, text.null_kind == "zeros" ? "zeros" : "empty", o.batch_size);
  } else if (!prompts_from.empty()) {
    // Only the captions images use: image i takes caption i % P.
    try {
      e = shard_set_prompt_embeddings(prompts_from, o.seed, std::max(o.samples, o.compare_rows));
    } catch (const std::exception& err) {
      throw std::runtime_error("sweep: " + source.description +
                               " was trained on precomputed text embeddings (model.conditioning=precomputed), so its "
                               "prompts need embeddings: " + err.what() +
                               ", or pass --text-encoder or --prompt-embeddings");
    }
  } else {
    throw std::invalid_argument("sweep: " + source.description +
                                " was trained on precomputed text embeddings (model.conditioning=precomputed): pass "
                                "--text-encoder ENCODER.pt (the encoder it was trained with) or --prompt-embeddings "
                                "FILE.h5, or take the prompts from a shard set with embeddings (--captions-from)");
  }
  resolve_for_model(e, text);
  return PromptSet(std::move(e));
}

}  // namespace

SweepCounts run_sweep(const SweepOptions& input, Communicator* comm) {
  validate_sweep_options(input);
  SweepOptions o = input;
  const bool lead = !comm || comm->rank() == 0;
  std::string prompts_from;  // the shard set whose captions are the prompts, if any
  if (o.prompts.empty() && o.prompt_embeddings.empty()) {
    // The held-out set's own captions when the reference is a shard set.
    const bool reference_is_shards = !is_gaussian_stats_file(o.reference) && fs::is_directory(o.reference) &&
                                     !fs::exists(fs::path(o.reference) / "manifest.jsonl");
    const std::string from = !o.captions_from.empty() ? o.captions_from : reference_is_shards ? o.reference : "";
    o.prompts = from.empty() ? synthetic_prompts() : shard_set_prompts(from, o.seed);
    prompts_from = from;
    if (o.prompts.empty()) throw std::invalid_argument("sweep: " + from + " holds no captions to use as prompts");
    for (size_t i = 0; i < o.prompts.size(); ++i)
      check_prompt(o.prompts[i], "sweep: caption " + std::to_string(i) + " of " + from);
    if (lead)
      spdlog::info("sweep: prompts: {}", from.empty() ? "the built-in colour x shape list" : "captions of " + from);
  }
  if (lead) fs::create_directories(o.out_dir);
  if (comm) comm->barrier("sweep: output directory made");
  if (!o.vae_decoder.empty() && o.checkpoint.empty())
    bad_sweep_option("--vae-decoder", o.vae_decoder, "only with --checkpoint (its config holds the latents' scale and shift)");
  const DenoiserSource source = with_precision(o.model_file.empty() ? load_checkpoint_denoiser(o.checkpoint, o.vae_decoder)
                                                                    : load_torchscript_denoiser(o.model_file, 0, 0),
                                               o.precision);
  const int64_t T = source.schedule.timesteps;
  for (int64_t n : o.steps)
    if (n > T) bad_sweep_option("--steps", std::to_string(n), "at most the model's " + std::to_string(T) + " timesteps (" + source.description + ")");
  if (o.compare_steps > T)
    bad_sweep_option("--compare-steps", std::to_string(o.compare_steps), "at most the model's " + std::to_string(T) + " timesteps");
  const PromptSet prompts = sweep_prompts(o, source, prompts_from);
  FeatureExtractor extractor(o.extractor);
  const GaussianStats reference = reference_stats(o, extractor, comm);

  SweepInputs inputs;
  inputs.model = source.identity;
  Sha256 prompt_digest;
  for (const auto& p : prompts.captions) prompt_digest.text(p);
  // A precomputed model's images depend on the embeddings and null condition, not only the captions.
  if (prompts.embeddings) prompt_digest.text(digest_of(*prompts.embeddings));
  inputs.prompts = prompt_digest.hex();
  inputs.reference =
      Sha256().integer(reference.count).tensor(reference.mean).tensor(reference.covariance).hex();
  inputs.extractor = sha256_of_file(o.extractor);
  inputs.seed = o.seed;

  std::vector<FidPoint> points;
  for (double w : o.guidance)
    for (const auto& name : o.samplers)
      for (double eta : o.eta) {
        for (int64_t n : o.steps) {
          FidPoint p{diffusion::evaluation_spec(name, name == "ddpm" ? T : n, eta,
                                                  diffusion::clip_by_default(source.prediction, source.latents)), w};
          diffusion::validate(p.sampler, source.schedule);
          points.push_back(p);
          if (name == "ddpm") break;  // all T steps: one point per guidance scale
        }
        if (name != "ddim") break;  // only ddim takes eta
      }

  // Rank 0 reads what is stored and tells the others, so every rank makes the same decisions.
  const fs::path results = fs::path(o.out_dir) / "results.jsonl";
  std::string stored_text = lead ? read_text(results) : std::string();
  if (comm) comm->broadcast_bytes(stored_text, 0, "sweep: stored results");
  std::map<std::string, std::string> stored_key;  // setting -> key of its latest row
  for (const auto& r : parse_results(stored_text)) stored_key[setting_of(r)] = r.value("key", std::string());

  SweepCounts counts;
  size_t index = 0;
  for (const auto& p : points) {
    ++index;
    nlohmann::json row = point_row(p, o, inputs);
    const auto found = stored_key.find(setting_of(row));
    const bool stored = found != stored_key.end();
    if (stored && found->second == row["key"].get<std::string>()) {
      ++counts.reused;
      if (lead) spdlog::info("sweep [{}/{}] {} steps={} eta={} w={}: already done", index, points.size(),
                             p.sampler.name, p.sampler.steps, p.sampler.eta, p.guidance);
      if (o.push) o.push->progress(static_cast<double>(index) * o.samples, static_cast<int64_t>(points.size()) * o.samples);
      continue;
    }
    ++(stored ? counts.recomputed : counts.added);
    if (lead && stored)
      spdlog::info("sweep [{}/{}] {} steps={} eta={} w={}: stored point made from other inputs (model, prompts, "
                   "reference, extractor or seed): recomputing",
                   index, points.size(), p.sampler.name, p.sampler.steps, p.sampler.eta, p.guidance);
    const auto r = fid_point(source, p, prompts, o.samples, o.seed, o.batch_size, extractor, reference, comm, true);
    if (o.push) {
      if (lead) o.push->record_fid(p.sampler.name, p.sampler.steps, p.guidance, p.sampler.eta, r.fid);
      o.push->progress(static_cast<double>(index) * o.samples, static_cast<int64_t>(points.size()) * o.samples);
    }
    if (lead) {
      row["nfe"] = r.nfe;
      row["fid"] = r.fid;
      row["seconds"] = r.seconds;
      row["images_per_second"] = static_cast<double>(r.samples) / r.seconds;
      row["description"] = source.description;
      std::ofstream(results, std::ios::app) << row.dump() << "\n";
      spdlog::info("sweep [{}/{}] {} steps={} (NFE {}) eta={} w={}: FID {:.3f} ({} images, {:.1f} s)", index,
                   points.size(), p.sampler.name, p.sampler.steps, r.nfe, p.sampler.eta, p.guidance, r.fid,
                   r.samples, r.seconds);
    }
  }
  if (lead) {
    // One row per setting: a recomputed point replaces the stored one.
    const auto rows = latest_per_setting(parse_results(read_text(results)));
    std::string text;
    for (const auto& r : rows) text += r.dump() + "\n";
    write_file_atomically(results.string(), text.data(), text.size());
    const std::string mine = inputs_of(point_row(points.front(), o, inputs));
    std::vector<nlohmann::json> current;
    for (const auto& r : rows)
      if (inputs_of(r) == mine) current.push_back(r);
    if (current.size() < rows.size())
      spdlog::info("sweep: {} stored point(s) made from other inputs (model, prompts, reference, extractor or seed) "
                   "stay in results.jsonl but are left out of the summaries",
                   rows.size() - current.size());
    write_summaries(o, current);
    if (o.compare_rows > 0) write_comparison(o, source, prompts);
    spdlog::info("sweep: {} points: {} reused, {} recomputed (inputs changed), {} new; results in {}", points.size(),
                 counts.reused, counts.recomputed, counts.added, o.out_dir);
  }
  if (comm) comm->barrier("sweep: summaries written");
  return counts;
}

}  // namespace difftrain::eval
