#include "eval/domain_features.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>

#include "data/sample_order.h"
#include "data/shard_reader.h"

namespace difftrain::eval {
namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {

// The network: five 3x3 conv + GroupNorm + SiLU blocks, average-pooled to a
// 4x4 grid (coarse position survives, any training size works), then a
// linear layer to the feature vector and a linear classifier head.
constexpr int64_t kWidths[] = {32, 64, 64, 128, 128};
constexpr int64_t kStrides[] = {1, 2, 1, 2, 1};
constexpr int64_t kLayers = 5;
constexpr int64_t kNormGroups = 8;
constexpr double kNormEps = 1e-5;
constexpr int64_t kPooledSide = 4;
constexpr int64_t kFeatureDim = 256;
constexpr int64_t kMinImageSize = 8;
constexpr int64_t kEvalBatch = 256;
constexpr int64_t kVerifyImages = 64;
constexpr double kExportTolerance = 1e-3;
constexpr int64_t kLossWindow = 50;

std::string flat_name(std::string name) {
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

struct DomainNetImpl : torch::nn::Module {
  DomainNetImpl(int64_t channels, int64_t image_size, int64_t classes) : channels(channels), size(image_size) {
    int64_t in = channels;
    for (int64_t i = 0; i < kLayers; ++i) {
      const std::string n = std::to_string(i);
      convs.push_back(register_module(
          "conv" + n, torch::nn::Conv2d(torch::nn::Conv2dOptions(in, kWidths[i], 3).stride(kStrides[i]).padding(1))));
      norms.push_back(register_module(
          "norm" + n, torch::nn::GroupNorm(torch::nn::GroupNormOptions(kNormGroups, kWidths[i]).eps(kNormEps))));
      in = kWidths[i];
    }
    fc = register_module("fc", torch::nn::Linear(in * kPooledSide * kPooledSide, kFeatureDim));
    head = register_module("head", torch::nn::Linear(kFeatureDim, classes));
  }

  // images01: (B, 1 or 3, H, W) in [0, 1] -> (B, channels, size, size) in [-1, 1]
  torch::Tensor prepare(torch::Tensor x) const {
    if (channels == 1 && x.size(1) != 1) x = torch::mean(x, {1}, true);
    else if (channels == 3 && x.size(1) == 1) x = x.expand({-1, 3, -1, -1});
    x = torch::upsample_bilinear2d(x, {size, size}, false);
    return x * 2.0 - 1.0;
  }

  // The same aten calls, in the same order, as features() in script_source().
  torch::Tensor embed(torch::Tensor x) {  // (B, channels, size, size) -> (B, kFeatureDim)
    for (int64_t i = 0; i < kLayers; ++i) {
      x = torch::conv2d(x, convs[i]->weight, convs[i]->bias, kStrides[i], 1);
      x = torch::silu(torch::group_norm(x, kNormGroups, norms[i]->weight, norms[i]->bias, kNormEps, false));
    }
    x = torch::flatten(torch::adaptive_avg_pool2d(x, {kPooledSide, kPooledSide}), 1);
    return torch::silu(torch::linear(x, fc->weight, fc->bias));
  }

  torch::Tensor features(const torch::Tensor& images01) { return embed(prepare(images01)); }
  torch::Tensor classify(const torch::Tensor& images01) { return head(features(images01)); }

  int64_t channels, size;
  std::vector<torch::nn::Conv2d> convs;
  std::vector<torch::nn::GroupNorm> norms;
  torch::nn::Linear fc{nullptr}, head{nullptr};
};
TORCH_MODULE(DomainNet);

// TorchScript of the exported module. Only aten builtins (torch.*), so it
// compiles from C++ without Python.
std::string script_source() {
  std::ostringstream s;
  s << "def prepare(self, images: Tensor) -> Tensor:\n"
       "    x = images\n"
       "    if self.in_channels == 1 and x.size(1) != 1:\n"
       "        x = torch.mean(x, [1], True)\n"
       "    elif self.in_channels == 3 and x.size(1) == 1:\n"
       "        x = x.expand([-1, 3, -1, -1])\n"
       "    x = torch.upsample_bilinear2d(x, [self.image_size, self.image_size], False, None, None)\n"
       "    return x * 2.0 - 1.0\n"
       "\n"
       "def features(self, images: Tensor) -> Tensor:\n"
       "    x = self.prepare(images)\n";
  for (int64_t i = 0; i < kLayers; ++i) {
    s << "    x = torch.conv2d(x, self.conv" << i << "_weight, self.conv" << i << "_bias, [" << kStrides[i] << ", "
      << kStrides[i] << "], [1, 1])\n"
      << "    x = torch.silu(torch.group_norm(x, " << kNormGroups << ", self.norm" << i << "_weight, self.norm" << i
      << "_bias, " << kNormEps << ", False))\n";
  }
  s << "    x = torch.flatten(torch.adaptive_avg_pool2d(x, [" << kPooledSide << ", " << kPooledSide << "]), 1)\n"
       "    return torch.silu(torch.linear(x, self.fc_weight, self.fc_bias))\n"
       "\n"
       "def forward(self, images: Tensor) -> Tensor:\n"
       "    return self.features(images)\n"
       "\n"
       "def classify(self, images: Tensor) -> Tensor:\n"
       "    return torch.linear(self.features(images), self.head_weight, self.head_bias)\n";
  return s.str();
}

// ---------------------------------------------------------------------------
// Labelled shard sets

struct ShardSet {
  std::string dir;
  data::ImageGeometry geometry;
  std::vector<std::unique_ptr<data::ShardReader>> readers;
  std::vector<int64_t> first;                  // (shards) global index of each shard's sample 0
  std::vector<std::string> captions;           // (N)
  std::optional<std::vector<int64_t>> labels;  // (N), when every shard has them
  std::string shard_without_labels;            // the first shard lacking them
  int64_t labelled_shards = 0;
  std::optional<std::vector<std::string>> label_names;

  int64_t size() const { return static_cast<int64_t>(captions.size()); }

  // indices: global sample indices -> (B, C, H, W) float32 in [0, 1]
  torch::Tensor images(const std::vector<int64_t>& indices) const {
    const int64_t n = static_cast<int64_t>(indices.size());
    std::vector<uint8_t> bytes(static_cast<size_t>(n * geometry.bytes()));  // (B, H, W, C)
    for (int64_t b = 0; b < n; ++b) {
      const int64_t i = indices[b];
      const size_t shard = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), i) - first.begin() - 1);
      readers[shard]->read(i - first[shard], bytes.data() + b * geometry.bytes(), nullptr);
    }
    return torch::from_blob(bytes.data(), {n, geometry.height, geometry.width, geometry.channels}, torch::kUInt8)
        .permute({0, 3, 1, 2})
        .to(torch::kFloat32)
        .div_(255.0f)
        .contiguous();
  }
};

std::vector<std::string> parse_label_names(const std::string& path, const std::string& text) {
  const auto fail = [&] {
    return std::runtime_error("shard " + path + ": root attribute '" + data::kLabelNamesAttribute + "' is " + text +
                              ", expected a JSON array of strings");
  };
  nlohmann::json names;
  try {
    names = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw fail();
  }
  if (!names.is_array()) throw fail();
  std::vector<std::string> out;
  for (const auto& name : names) {
    if (!name.is_string()) throw fail();
    out.push_back(name.get<std::string>());
  }
  return out;
}

ShardSet open_set(const std::string& dir) {
  if (!fs::is_directory(dir)) {
    throw std::runtime_error("shard directory " + dir + (fs::exists(dir) ? " is not a directory" : " does not exist"));
  }
  ShardSet set;
  set.dir = dir;
  set.geometry = data::shard_directory_geometry(dir);
  std::vector<int64_t> labels;
  bool all_labelled = true;
  for (const data::ShardInfo& info : data::open_shard_directory(dir, set.geometry)) {
    set.first.push_back(set.size());
    set.readers.push_back(std::make_unique<data::ShardReader>(info));
    for (int64_t i = 0; i < info.count; ++i) {
      std::string caption;
      set.readers.back()->read(i, nullptr, &caption);
      set.captions.push_back(std::move(caption));
    }
    const auto shard_labels = data::read_shard_labels(info.path);
    if (shard_labels) {
      ++set.labelled_shards;
      labels.insert(labels.end(), shard_labels->begin(), shard_labels->end());
    } else if (all_labelled) {
      all_labelled = false;
      set.shard_without_labels = info.path;
    }
    if (const auto text = data::read_shard_attribute(info.path, data::kLabelNamesAttribute)) {
      auto names = parse_label_names(info.path, *text);
      if (set.label_names && names != *set.label_names) {
        throw std::runtime_error("shard " + info.path + ": root attribute '" + data::kLabelNamesAttribute + "' is " +
                                 *text + ", unlike the earlier shards of " + dir);
      }
      set.label_names = std::move(names);
    }
  }
  if (all_labelled) set.labels = std::move(labels);
  return set;
}

struct ClassTable {
  std::string source;                              // "labels" | "captions"
  std::vector<std::string> names;                  // (K)
  std::map<std::string, int64_t> caption_classes;  // caption -> class
  std::vector<int64_t> targets;                    // (N) of the training set
};

std::vector<int64_t> checked_labels(const ShardSet& set, int64_t classes, const std::string& why) {
  if (!set.labels) {
    throw std::runtime_error("shard " + set.shard_without_labels + " has no '" + data::kLabelsDataset + "' dataset (" +
                             why + ")");
  }
  for (size_t shard = 0; shard < set.readers.size(); ++shard) {
    const int64_t end = shard + 1 < set.first.size() ? set.first[shard + 1] : set.size();
    for (int64_t i = set.first[shard]; i < end; ++i) {
      const int64_t label = (*set.labels)[static_cast<size_t>(i)];
      if (label < 0 || label >= classes) {
        throw std::runtime_error("shard " + set.readers[shard]->info().path + ": label " + std::to_string(label) +
                                 " of sample " + std::to_string(i - set.first[shard]) + " is outside [0, " +
                                 std::to_string(classes) + ")" +
                                 (set.label_names ? " (root attribute 'label_names' lists " +
                                                        std::to_string(classes) + " classes)"
                                                  : ""));
      }
    }
  }
  return *set.labels;
}

ClassTable classes_from_labels(const ShardSet& set, const std::string& why) {
  ClassTable table;
  table.source = "labels";
  int64_t classes = 0;
  if (set.label_names) {
    classes = static_cast<int64_t>(set.label_names->size());
    table.names = *set.label_names;
  } else if (set.labels) {
    for (int64_t label : *set.labels) classes = std::max(classes, label + 1);
    for (int64_t k = 0; k < classes; ++k) table.names.push_back(std::to_string(k));
  }
  table.targets = checked_labels(set, classes, why);
  // A caption seen with several labels maps to its most frequent (ties: the smaller).
  std::map<std::string, std::map<int64_t, int64_t>> votes;
  for (int64_t i = 0; i < set.size(); ++i) ++votes[set.captions[i]][table.targets[i]];
  int64_t ambiguous = 0;
  for (const auto& [caption, counts] : votes) {
    const auto best = std::max_element(counts.begin(), counts.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
    table.caption_classes[caption] = best->first;
    ambiguous += counts.size() > 1;
  }
  if (ambiguous > 0) {
    spdlog::warn("domain features: {} captions of {} occur with several labels; each maps to its most frequent",
                 ambiguous, set.dir);
  }
  return table;
}

ClassTable classes_from_captions(const ShardSet& set) {
  ClassTable table;
  table.source = "captions";
  for (const std::string& caption : set.captions) table.caption_classes.emplace(caption, 0);
  const int64_t count = static_cast<int64_t>(table.caption_classes.size());
  if (count > kMaxCaptionClasses) {
    throw std::runtime_error("shard directory " + set.dir + " has " + std::to_string(count) +
                             " distinct captions; at most " + std::to_string(kMaxCaptionClasses) +
                             " can be classes: give its shards an int64 '" + data::kLabelsDataset +
                             "' dataset (docs/SHARD_FORMAT.md)");
  }
  int64_t k = 0;
  for (auto& [caption, cls] : table.caption_classes) {
    cls = k++;
    table.names.push_back(caption);
  }
  for (const std::string& caption : set.captions) table.targets.push_back(table.caption_classes.at(caption));
  return table;
}

ClassTable make_classes(const ShardSet& set, LabelSource source) {
  ClassTable table;
  if (source == LabelSource::kColumn) {
    table = classes_from_labels(set, "--labels column");
  } else if (source == LabelSource::kAuto && set.labels) {
    table = classes_from_labels(set, "--labels auto");
  } else {
    if (source == LabelSource::kAuto && set.labelled_shards > 0) {
      spdlog::warn("domain features: some shards of {} have labels but {} has none; using captions as classes",
                   set.dir, set.shard_without_labels);
    }
    table = classes_from_captions(set);
  }
  if (table.names.size() < 2) {
    throw std::runtime_error("shard directory " + set.dir + " has " + std::to_string(table.names.size()) + " " +
                             (table.source == "labels" ? "label class" : "distinct caption") +
                             "; a classifier needs at least 2 classes");
  }
  return table;
}

// The held-out images and their classes; kept[i] indexes into `set`.
struct HeldOut {
  std::vector<int64_t> kept, targets;
  int64_t skipped = 0;
};

HeldOut held_out_of_other_set(const ShardSet& set, const ShardSet& training, const ClassTable& table) {
  HeldOut out;
  if (table.source == "labels") {
    if (set.label_names && training.label_names && *set.label_names != *training.label_names) {
      throw std::runtime_error("held-out shards in " + set.dir + " have other 'label_names' than the training shards");
    }
    out.targets = checked_labels(set, static_cast<int64_t>(table.names.size()), "--holdout-data with labelled training data");
    for (int64_t i = 0; i < set.size(); ++i) out.kept.push_back(i);
    return out;
  }
  for (int64_t i = 0; i < set.size(); ++i) {
    const auto it = table.caption_classes.find(set.captions[i]);
    if (it == table.caption_classes.end()) {
      ++out.skipped;
      continue;
    }
    out.kept.push_back(i);
    out.targets.push_back(it->second);
  }
  return out;
}

std::vector<int64_t> gather(const std::vector<int64_t>& values, const std::vector<int64_t>& at) {
  std::vector<int64_t> out;
  out.reserve(at.size());
  for (int64_t i : at) out.push_back(values[static_cast<size_t>(i)]);
  return out;
}

// Each image moved by up to `margin` pixels in x and y (edges replicated).
// x: (B, C, S, S) -> (B, C, S, S)
torch::Tensor random_shift(const torch::Tensor& x, int64_t margin, std::mt19937_64& rng) {
  const int64_t s = x.size(2);
  const torch::Tensor padded =
      F::pad(x, F::PadFuncOptions({margin, margin, margin, margin}).mode(torch::kReplicate));
  std::vector<torch::Tensor> out;
  for (int64_t b = 0; b < x.size(0); ++b) {
    const int64_t dy = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * margin + 1));
    const int64_t dx = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * margin + 1));
    out.push_back(padded[b].slice(1, dy, dy + s).slice(2, dx, dx + s));
  }
  return torch::stack(out);
}

std::vector<int64_t> predictions(DomainNet& net, const ShardSet& set, const std::vector<int64_t>& indices) {
  std::vector<int64_t> out;
  for (size_t start = 0; start < indices.size(); start += kEvalBatch) {
    const std::vector<int64_t> chunk(indices.begin() + static_cast<std::ptrdiff_t>(start),
                                     indices.begin() + static_cast<std::ptrdiff_t>(std::min(indices.size(), start + kEvalBatch)));
    const torch::Tensor predicted = net->classify(set.images(chunk)).argmax(1).contiguous();
    out.insert(out.end(), predicted.data_ptr<int64_t>(), predicted.data_ptr<int64_t>() + predicted.numel());
  }
  return out;
}

torch::jit::Module to_script(DomainNet& net, const ClassTable& table, const std::string& report_json) {
  torch::jit::Module module(c10::QualifiedName("__torch__.difftrain.DomainFeatures"));
  for (const auto& p : net->named_parameters()) {
    module.register_parameter(flat_name(p.key()), p.value().detach().clone(), false);
  }
  module.register_attribute("image_size", c10::IntType::get(), net->size);
  module.register_attribute("in_channels", c10::IntType::get(), net->channels);
  c10::List<std::string> names;
  for (const std::string& name : table.names) names.push_back(name);
  module.register_attribute("class_names", c10::ListType::ofStrings(), names);
  c10::Dict<std::string, int64_t> captions;
  for (const auto& [caption, cls] : table.caption_classes) captions.insert(caption, cls);
  module.register_attribute("caption_classes", c10::DictType::create(c10::StringType::get(), c10::IntType::get()),
                            captions);
  module.register_attribute("label_source", c10::StringType::get(), table.source);
  module.register_attribute("training_report", c10::StringType::get(), report_json);
  module.define(script_source());
  module.eval();
  return module;
}

}  // namespace

LabelSource parse_label_source(const std::string& word) {
  if (word == "auto") return LabelSource::kAuto;
  if (word == "captions") return LabelSource::kCaptions;
  if (word == "column") return LabelSource::kColumn;
  throw std::invalid_argument("label source '" + word + "': expected auto, captions or column");
}

DomainFeatureReport train_domain_features(const DomainFeatureOptions& o, const std::string& out_path) {
  if (o.steps < 1 || o.batch_size < 1 || o.threads < 1 || !(o.lr > 0)) {
    throw std::invalid_argument("domain features: steps, batch size, threads and lr must be positive");
  }
  const ShardSet set = open_set(o.data_dir);
  const int64_t channels = set.geometry.channels;
  const int64_t size =
      o.image_size > 0 ? o.image_size
                       : std::min({set.geometry.height, set.geometry.width, kDefaultMaxTrainingSize});
  if (size < kMinImageSize) {
    throw std::invalid_argument("domain features: image size " + std::to_string(size) + " is below " +
                                std::to_string(kMinImageSize));
  }
  const ClassTable table = make_classes(set, o.labels);
  const int64_t classes = static_cast<int64_t>(table.names.size());

  // The split: a seeded permutation's first 10 % is held out.
  std::vector<int64_t> train_indices;
  HeldOut held_out;
  std::optional<ShardSet> other;
  if (o.holdout_dir.empty()) {
    const std::vector<int64_t> perm = data::epoch_permutation(set.size(), o.seed, /*epoch=*/-1);
    const int64_t n_held = static_cast<int64_t>(std::ceil(kHoldoutFraction * static_cast<double>(set.size())));
    held_out.kept.assign(perm.begin(), perm.begin() + n_held);
    std::sort(held_out.kept.begin(), held_out.kept.end());
    held_out.targets = gather(table.targets, held_out.kept);
    train_indices.assign(perm.begin() + n_held, perm.end());
    std::sort(train_indices.begin(), train_indices.end());
  } else {
    other.emplace(open_set(o.holdout_dir));
    held_out = held_out_of_other_set(*other, set, table);
    train_indices.resize(static_cast<size_t>(set.size()));
    for (int64_t i = 0; i < set.size(); ++i) train_indices[static_cast<size_t>(i)] = i;
  }
  const ShardSet& held_set = other ? *other : set;
  if (train_indices.size() < 2 || held_out.kept.empty()) {
    throw std::runtime_error("domain features: " + std::to_string(train_indices.size()) + " training and " +
                             std::to_string(held_out.kept.size()) + " held-out images in " + o.data_dir +
                             (o.holdout_dir.empty() ? "" : " / " + o.holdout_dir) + "; need at least 2 and 1");
  }
  const std::vector<int64_t> train_targets = gather(table.targets, train_indices);
  spdlog::info("domain features: {} classes from {}, {} training and {} held-out images {}, trained at {}x{}x{}",
               classes, table.source, train_indices.size(), held_out.kept.size(), to_string(set.geometry), size, size,
               channels);

  torch::set_num_threads(static_cast<int>(o.threads));
  torch::manual_seed(static_cast<int64_t>(o.seed));
  DomainNet net(channels, size, classes);
  torch::optim::AdamW optimizer(net->parameters(), torch::optim::AdamWOptions(o.lr));
  const int64_t batch = std::min<int64_t>(o.batch_size, static_cast<int64_t>(train_indices.size()));
  data::SampleOrder order(static_cast<int64_t>(train_indices.size()), batch, 0, 1, o.seed);
  data::LoaderPosition position;
  std::mt19937_64 rng(o.seed ^ 0x9e3779b97f4a7c15ULL);
  const int64_t margin = std::max<int64_t>(1, size / 16);
  std::vector<double> recent_losses;

  net->train();
  for (int64_t step = 0; step < o.steps; ++step) {
    const std::vector<int64_t> picks = order.batch(position);  // positions in train_indices
    position = order.next(position);
    std::vector<int64_t> targets;
    for (int64_t p : picks) targets.push_back(train_targets[static_cast<size_t>(p)]);
    torch::Tensor x = net->prepare(set.images(gather(train_indices, picks)));
    if (o.augment) x = random_shift(x, margin, rng);
    const torch::Tensor loss = F::cross_entropy(net->head(net->embed(x)), torch::tensor(targets));
    const double lr = o.lr * 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(o.steps)));
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    recent_losses.push_back(loss.item<double>());
    if (static_cast<int64_t>(recent_losses.size()) > kLossWindow) recent_losses.erase(recent_losses.begin());
    if ((step + 1) % 250 == 0 || step + 1 == o.steps) {
      spdlog::info("domain features: step {}/{} loss {:.4f}", step + 1, o.steps, recent_losses.back());
    }
  }

  net->eval();
  torch::NoGradGuard no_grad;
  DomainFeatureReport report;
  report.label_source = table.source;
  report.classes = classes;
  report.feature_dim = kFeatureDim;
  report.image_size = size;
  report.channels = channels;
  report.train_images = static_cast<int64_t>(train_indices.size());
  report.holdout_images = static_cast<int64_t>(held_out.kept.size());
  report.holdout_skipped = held_out.skipped;
  for (double l : recent_losses) report.final_loss += l / static_cast<double>(recent_losses.size());
  for (const std::string& name : table.names) report.per_class.push_back({name, 0, 0});
  const std::vector<int64_t> predicted = predictions(net, held_set, held_out.kept);
  int64_t correct = 0;
  for (size_t i = 0; i < predicted.size(); ++i) {
    ClassAccuracy& c = report.per_class[static_cast<size_t>(held_out.targets[i])];
    ++c.total;
    const bool hit = predicted[i] == held_out.targets[i];
    c.correct += hit;
    correct += hit;
  }
  report.holdout_accuracy = static_cast<double>(correct) / static_cast<double>(predicted.size());

  nlohmann::ordered_json info = {
      {"data", o.data_dir},
      {"holdout_data", o.holdout_dir},
      {"label_source", table.source},
      {"classes", classes},
      {"image_size", size},
      {"channels", channels},
      {"steps", o.steps},
      {"batch_size", batch},
      {"lr", o.lr},
      {"seed", o.seed},
      {"augment", o.augment},
      {"train_images", report.train_images},
      {"holdout_images", report.holdout_images},
      {"holdout_accuracy", report.holdout_accuracy}};
  torch::jit::Module module = to_script(net, table, info.dump());
  const std::string temp = out_path + ".tmp";
  module.save(temp);

  // The file as every user will see it: reloaded, fed three channels.
  const std::vector<int64_t> probe(held_out.kept.begin(),
                                   held_out.kept.begin() + std::min<int64_t>(kVerifyImages, report.holdout_images));
  const torch::Tensor images = held_set.images(probe);
  torch::jit::Module reloaded = torch::jit::load(temp);
  const torch::Tensor rgb = images.size(1) == 1 ? images.expand({-1, 3, -1, -1}).contiguous() : images;
  const torch::Tensor f = reloaded.get_method("features")({rgb}).toTensor();
  const torch::Tensor logits = reloaded.get_method("classify")({rgb}).toTensor();
  report.export_max_difference = std::max((f - net->features(images)).abs().max().item<double>(),
                                          (logits - net->classify(images)).abs().max().item<double>());
  if (!(report.export_max_difference < kExportTolerance)) {
    std::remove(temp.c_str());
    throw std::runtime_error("domain features: the exported module differs from the trained network by " +
                             std::to_string(report.export_max_difference));
  }
  if (std::rename(temp.c_str(), out_path.c_str()) != 0) {
    throw std::runtime_error("cannot move the feature extractor into place at '" + out_path + "'");
  }
  return report;
}

// ---------------------------------------------------------------------------

DomainClassifier::DomainClassifier(const std::string& path) : path_(path) {
  const auto fail = [&](const std::string& what) {
    throw std::runtime_error("classifier '" + path + "': " + what +
                             " (train one with `difftrain features --data`, docs/FID.md)");
  };
  if (!fs::exists(path)) fail("file does not exist");
  try {
    module_ = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    fail(std::string("cannot be loaded as TorchScript: ") + e.what_without_backtrace());
  }
  module_.eval();
  for (const char* method : {"forward", "classify"}) {
    if (!module_.find_method(method)) fail(std::string("has no ") + method + " method");
  }
  for (const char* attribute : {"class_names", "caption_classes"}) {
    if (!module_.hasattr(attribute)) fail(std::string("has no attribute ") + attribute);
  }
  try {
    for (const c10::IValue& name : module_.attr("class_names").toListRef()) class_names_.push_back(name.toStringRef());
    for (const auto& entry : module_.attr("caption_classes").toGenericDict()) {
      caption_classes_[entry.key().toStringRef()] = entry.value().toInt();
    }
  } catch (const c10::Error&) {
    fail("class_names must be List[str] and caption_classes Dict[str, int]");
  }
  if (class_names_.empty()) fail("class_names is empty");
  for (const auto& [caption, cls] : caption_classes_) {
    if (cls < 0 || cls >= static_cast<int64_t>(class_names_.size())) {
      fail("caption_classes maps \"" + caption + "\" to class " + std::to_string(cls) + " of " +
           std::to_string(class_names_.size()));
    }
  }
}

torch::Tensor DomainClassifier::call(const char* method, const torch::Tensor& images01, int64_t expected_columns) {
  if (images01.dim() != 4 || images01.size(1) != 3 || images01.size(0) < 1) {
    throw std::invalid_argument("classifier '" + path_ + "': images must be (B, 3, H, W), got " +
                                std::to_string(images01.dim()) + " dimensions");
  }
  torch::NoGradGuard no_grad;
  c10::IValue out;
  try {
    out = module_.get_method(method)({images01.detach().to(torch::kCPU, torch::kFloat32).contiguous()});
  } catch (const c10::Error& e) {
    throw std::runtime_error("classifier '" + path_ + "': " + method + " failed: " + e.what_without_backtrace());
  }
  if (!out.isTensor() || out.toTensor().dim() != 2 || out.toTensor().size(0) != images01.size(0) ||
      (expected_columns > 0 && out.toTensor().size(1) != expected_columns)) {
    throw std::runtime_error("classifier '" + path_ + "': " + method + " did not return (B, " +
                             (expected_columns > 0 ? std::to_string(expected_columns) : std::string("D")) + ")");
  }
  return out.toTensor().to(torch::kFloat32);
}

torch::Tensor DomainClassifier::features(const torch::Tensor& images01) { return call("forward", images01, 0); }

torch::Tensor DomainClassifier::classify(const torch::Tensor& images01) {
  return call("classify", images01, static_cast<int64_t>(class_names_.size()));
}

int64_t DomainClassifier::class_of_caption(const std::string& caption) const {
  const auto it = caption_classes_.find(caption);
  if (it == caption_classes_.end()) {
    throw std::runtime_error("prompt \"" + caption + "\" is not in the caption table of classifier '" + path_ + "' (" +
                             std::to_string(caption_classes_.size()) + " captions)");
  }
  return it->second;
}

}  // namespace difftrain::eval
