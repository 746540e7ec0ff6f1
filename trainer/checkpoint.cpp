#include "trainer/checkpoint.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>

#include "distributed/communicator.h"
#include "trainer/checkpoint_manifest.h"

namespace difftrain {
namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";
constexpr const char* kTempPrefix = ".tmp-step-";
constexpr const char* kCorruptPrefix = "corrupt-";
constexpr const char* kStateFile = "state.json";
constexpr const char* kConfigFile = "config.yaml";
// Every checkpoint file, in the order they are written and listed in the manifest.
const std::vector<std::string> kFiles = {"model.pt", "ema.pt", "optimizer.pt", kConfigFile, kStateFile};

// The step a directory name claims: step-N, or corrupt-step-N[.k] once moved aside.
std::optional<int64_t> step_of_name(const std::string& name) {
  static const std::regex pattern("^(corrupt-)?step-([0-9]{1,18})(\\.[0-9]+)?$");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  if (!m[1].matched && m[3].matched) return std::nullopt;  // a suffix only on moved-aside directories
  return std::stoll(m[2].str());
}

// "run/checkpoints/step-000000010/" names step-000000010, not "".
fs::path without_trailing_slash(const fs::path& dir) { return dir.has_filename() ? dir : dir.parent_path(); }

// Checkpoint directories (step-N) under run_dir/checkpoints, newest first, complete or not.
std::vector<std::pair<int64_t, fs::path>> checkpoint_dirs(const std::string& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  const fs::path dir = checkpoints_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kPrefix, 0) != 0 || !entry.is_directory()) continue;
    if (auto step = step_of_name(name)) found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// ---- state.json ----------------------------------------------------------------

nlohmann::json state_to_json(const TrainingState& s) {
  return {{"step", s.step},
          {"images_seen", s.images_seen},
          {"epoch", s.epoch},
          {"samples_in_epoch", s.samples_in_epoch},
          {"loss_scale", s.loss_scale},
          {"loss_scale_clean_steps", s.loss_scale_clean_steps},
          {"world_size", s.world_size}};
}

// Throws std::runtime_error with the message without the file name ("key 'step' = -5: expected ...").
// `expected_step`: the step the directory name (or the manifest) says.
TrainingState parse_state(const std::string& text, std::optional<int64_t> expected_step, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("not JSON: ") + e.what());
  }
  if (!j.is_object()) throw std::runtime_error("not a JSON object");
  const auto integer = [&](const char* key, int64_t minimum) {
    const auto it = j.find(key);
    if (it == j.end()) throw std::runtime_error(std::string("key '") + key + "' is missing");
    if (!it->is_number_integer())
      throw std::runtime_error(std::string("key '") + key + "' = " + it->dump() + ": expected an integer >= " +
                               std::to_string(minimum) + ", not " +
                               (it->is_number() ? std::string("a fraction") : std::string("a JSON ") + it->type_name()));
    const int64_t value = it->get<int64_t>();
    if (value < minimum || (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(INT64_MAX)))
      throw std::runtime_error(std::string("key '") + key + "' = " + it->dump() + ": expected an integer >= " +
                               std::to_string(minimum));
    return value;
  };
  TrainingState s;
  s.step = integer("step", 0);
  s.images_seen = integer("images_seen", 0);
  s.epoch = integer("epoch", 0);
  s.samples_in_epoch = integer("samples_in_epoch", 0);
  s.loss_scale_clean_steps = integer("loss_scale_clean_steps", 0);
  s.world_size = integer("world_size", 1);
  const auto scale = j.find("loss_scale");
  if (scale == j.end()) throw std::runtime_error("key 'loss_scale' is missing");
  if (!scale->is_number() || !std::isfinite(scale->get<double>()) || scale->get<double>() <= 0)
    throw std::runtime_error("key 'loss_scale' = " + scale->dump() + ": expected a finite number > 0");
  s.loss_scale = scale->get<double>();
  if (expected_step && s.step != *expected_step)
    throw std::runtime_error("key 'step' = " + std::to_string(s.step) + ": " + source + " says step " +
                             std::to_string(*expected_step));
  return s;
}

// ---- reading and verifying -----------------------------------------------------

struct Verified {
  CheckpointCheck check;
  std::map<std::string, std::string> bytes;  // the files read, by name
  TrainingState state;                       // valid when state.json was read and check.ok()
};

std::string short_hash(const std::string& hex) { return hex.substr(0, 16) + "..."; }

bool is_ema_profile_name(const std::string& name) {
  static const std::regex pattern("^ema-profile-[0-9]{1,3}\\.pt$");
  return std::regex_match(name, pattern);
}

// Reads manifest.json and the files `names` of `dir`, checking each against the manifest;
// with `listed_profiles` also every ema-profile-<k>.pt the manifest lists.
Verified read_and_verify(const fs::path& given, std::vector<std::string> names, bool listed_profiles = false) {
  const fs::path dir = without_trailing_slash(given);
  Verified v;
  v.check.dir = dir.string();
  std::vector<std::string> problems;
  const auto note = [&](const std::string& name, const std::string& result, bool counts = true) {
    v.check.files.push_back({name, result});
    if (result != "ok" && counts) problems.push_back(name + ": " + result);
  };
  const auto finish = [&]() {
    for (size_t i = 0; i < problems.size(); ++i) v.check.problem += (i ? "; " : "") + problems[i];
    return v;
  };
  const std::optional<int64_t> directory_step = step_of_name(dir.filename().string());

  std::string text;
  CheckpointManifest manifest;
  try {
    if (!read_file_bytes((dir / kManifestFile).string(), text)) {
      note(kManifestFile, "missing (it is written last: the checkpoint was never completed, or predates verification)");
      for (const auto& name : names)
        note(name, fs::exists(dir / name) ? "not verifiable without the manifest" : "missing", false);
      return finish();
    }
    manifest = parse_manifest(text);
  } catch (const std::exception& e) {
    note(kManifestFile, std::string("invalid (") + e.what() + ")");
    return finish();
  }
  if (directory_step && manifest.step != *directory_step)
    note(kManifestFile, "invalid (step " + std::to_string(manifest.step) + ", but the directory is " +
                            dir.filename().string() + ")");
  else
    note(kManifestFile, "ok");
  if (listed_profiles)
    for (const auto& f : manifest.files)
      if (is_ema_profile_name(f.name) && std::find(names.begin(), names.end(), f.name) == names.end())
        names.push_back(f.name);

  for (const auto& name : names) {
    const auto entry = std::find_if(manifest.files.begin(), manifest.files.end(),
                                    [&](const ManifestFile& f) { return f.name == name; });
    if (entry == manifest.files.end()) {
      note(name, "not listed in the manifest");
      continue;
    }
    std::string bytes;
    try {
      if (!read_file_bytes((dir / name).string(), bytes)) {
        note(name, "missing");
        continue;
      }
    } catch (const std::exception& e) {
      note(name, std::string("unreadable (") + e.what() + ")");
      continue;
    }
    if (static_cast<int64_t>(bytes.size()) != entry->size) {
      note(name, "size mismatch (" + std::to_string(bytes.size()) + " bytes, the manifest says " +
                     std::to_string(entry->size) + ")");
      continue;
    }
    const std::string hash = sha256_hex(bytes.data(), bytes.size());
    if (hash != entry->sha256) {
      note(name, "checksum mismatch (sha256 " + short_hash(hash) + ", the manifest says " + short_hash(entry->sha256) + ")");
      continue;
    }
    if (name == kStateFile) {
      try {
        v.state = directory_step ? parse_state(bytes, directory_step, "the directory's name")
                                 : parse_state(bytes, manifest.step, "manifest.json");
      } catch (const std::exception& e) {
        note(name, std::string("invalid (") + e.what() + ")");
        continue;
      }
    }
    note(name, "ok");
    v.bytes[name] = std::move(bytes);
  }
  return finish();
}

// ---- archives --------------------------------------------------------------------

// Modules and optimizers serialise themselves into an archive.
void write_archive(torch::serialize::OutputArchive& archive, const torch::nn::Module& m) { m.save(archive); }
void write_archive(torch::serialize::OutputArchive& archive, const torch::optim::Optimizer& o) { o.save(archive); }
void read_archive(torch::serialize::InputArchive& archive, torch::nn::Module& m) { m.load(archive); }
void read_archive(torch::serialize::InputArchive& archive, torch::optim::Optimizer& o) { o.load(archive); }

// To memory, so the bytes are hashed once and written by checked writes (LibTorch's
// own file writer aborts the process when the disk fills).
template <class T>
std::string serialise(const T& value) {
  torch::serialize::OutputArchive archive;
  write_archive(archive, value);
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

template <class T>
void load_archive(T& value, const std::string& bytes, const fs::path& path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size());
    read_archive(archive, value);
  } catch (const c10::Error& e) {
    throw CheckpointError("checkpoint file '" + path.string() + "' cannot be loaded: " + e.what_without_backtrace());
  }
}

void load_contents(const std::map<std::string, std::string>& bytes, const fs::path& dir, const CheckpointContents& c) {
  for (size_t k = 0; k < c.ema_profiles.size(); ++k)
    if (!bytes.count(ema_profile_file(k)))
      throw CheckpointError("checkpoint '" + dir.string() + "' has no " + ema_profile_file(k) + ": it was written "
                            "without train.ema_profiles, whose averages cannot be rebuilt afterwards (start a new "
                            "run.dir, or resume without train.ema_profiles)");
  load_archive(c.model, bytes.at("model.pt"), dir / "model.pt");
  load_archive(c.ema, bytes.at("ema.pt"), dir / "ema.pt");
  load_archive(c.optimizer, bytes.at("optimizer.pt"), dir / "optimizer.pt");
  for (size_t k = 0; k < c.ema_profiles.size(); ++k)
    load_archive(*c.ema_profiles[k], bytes.at(ema_profile_file(k)), dir / ema_profile_file(k));
}

// ---- choosing a checkpoint -------------------------------------------------------

bool looks_like_checkpoint(const fs::path& given) {
  const fs::path dir = without_trailing_slash(given);
  return step_of_name(dir.filename().string()) || fs::exists(dir / kManifestFile) || fs::exists(dir / kStateFile);
}

fs::path corrupt_destination(const fs::path& dir) {
  const fs::path base = dir.parent_path() / (kCorruptPrefix + dir.filename().string());
  fs::path candidate = base;
  for (int k = 1; fs::exists(candidate); ++k) candidate = base.string() + "." + std::to_string(k);
  return candidate;
}

struct Chosen {
  fs::path dir;
  Verified verified;
};

// The newest checkpoint of `run_dir` that verifies (all files read), or std::nullopt
// when there is none at all. Damaged newer ones get one warning each and, when
// `move_aside`, are renamed to corrupt-step-N.
std::optional<Chosen> newest_verified(const std::string& run_dir, bool move_aside) {
  const auto candidates = checkpoint_dirs(run_dir);
  if (candidates.empty()) return std::nullopt;
  std::vector<std::pair<fs::path, std::string>> damaged;
  std::optional<Chosen> chosen;
  for (const auto& [step, dir] : candidates) {
    auto v = read_and_verify(dir, kFiles, /*listed_profiles=*/true);
    if (v.check.ok()) {
      chosen = Chosen{dir, std::move(v)};
      break;
    }
    damaged.emplace_back(dir, v.check.problem);
  }
  if (!chosen) {
    std::string list;
    for (const auto& [dir, problem] : damaged) list += (list.empty() ? "" : "; ") + dir.filename().string() + ": " + problem;
    throw CheckpointError("no checkpoint under '" + checkpoints_dir(run_dir) + "' verifies (" + list +
                          "); nothing was moved or deleted: move them away to start afresh, or use another run.dir");
  }
  for (const auto& [dir, problem] : damaged) {
    if (move_aside) {
      const fs::path to = corrupt_destination(dir);
      fs::rename(dir, to);
      spdlog::warn("checkpoint {} is damaged ({}); moved aside to {}; resuming from {} instead",
                   dir.filename().string(), problem, to.filename().string(), chosen->dir.filename().string());
    } else {
      spdlog::warn("checkpoint {} is damaged ({}); using {} instead", dir.string(), problem, chosen->dir.string());
    }
  }
  if (move_aside && !damaged.empty()) fsync_directory(checkpoints_dir(run_dir));
  return chosen;
}

[[noreturn]] void throw_damaged(const CheckpointCheck& check) {
  throw CheckpointError("checkpoint '" + check.dir + "' does not verify: " + check.problem);
}

}  // namespace

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%09lld", kPrefix, static_cast<long long>(step));
  return buf;
}

std::string checkpoints_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  for (const auto& [step, dir] : checkpoint_dirs(run_dir))
    if (fs::exists(dir / kManifestFile)) return dir.string();
  return std::nullopt;
}

CheckpointCheck verify_checkpoint(const std::string& dir) {
  return read_and_verify(dir, kFiles, /*listed_profiles=*/true).check;
}

std::string ema_profile_file(size_t k) { return "ema-profile-" + std::to_string(k) + ".pt"; }

std::string find_checkpoint(const std::string& path) {
  if (!fs::exists(path)) throw CheckpointError("checkpoint directory '" + path + "' does not exist");
  if (looks_like_checkpoint(path)) return path;
  const auto all = checkpoint_dirs(path);
  if (!all.empty()) return all.front().second.string();
  throw CheckpointError("'" + path + "' is neither a checkpoint (no " + kManifestFile +
                        ") nor a run directory with checkpoints under checkpoints/");
}

std::string resolve_checkpoint(const std::string& path) {
  const std::string dir = find_checkpoint(path);  // throws when there is none
  if (looks_like_checkpoint(path)) {
    const auto check = verify_checkpoint(dir);
    if (!check.ok()) throw_damaged(check);
    return dir;
  }
  return newest_verified(path, /*move_aside=*/false)->dir.string();
}

void remove_incomplete_checkpoints(const std::string& run_dir) {
  const fs::path dir = checkpoints_dir(run_dir);
  if (!fs::is_directory(dir)) return;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind(kTempPrefix, 0) == 0) fs::remove_all(entry.path());
}

fs::path write_checkpoint_directory(const fs::path& root, int64_t step,
                                    const std::vector<std::pair<std::string, std::string>>& files) {
  const fs::path final_dir = root / checkpoint_name(step);
  const fs::path temp_dir = root / (kTempPrefix + std::to_string(step));
  try {
    fs::create_directories(root);
    fs::remove_all(temp_dir);
    fs::create_directories(temp_dir);
    CheckpointManifest manifest;
    manifest.step = step;
    for (const auto& [name, bytes] : files) {
      write_file_synced((temp_dir / name).string(), bytes);
      manifest.files.push_back({name, static_cast<int64_t>(bytes.size()), sha256_hex(bytes.data(), bytes.size())});
    }
    write_file_synced((temp_dir / kManifestFile).string(), manifest_to_json(manifest));
    fsync_directory(temp_dir.string());
    fs::remove_all(final_dir);  // a re-run of the same step replaces it
    fs::rename(temp_dir, final_dir);
    fsync_directory(root.string());
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove_all(temp_dir, ignored);
    throw CheckpointError("checkpoint at step " + std::to_string(step) + " not written: " + e.what() +
                          " (its temporary directory was removed; the older checkpoints are as they were)");
  }
  return final_dir;
}

std::string serialise_module(const torch::nn::Module& module) { return serialise(module); }
void load_module_bytes(torch::nn::Module& module, const std::string& bytes, const std::string& path) {
  load_archive(module, bytes, path);
}

std::map<std::string, std::string> read_verified_files(const std::string& dir, const std::vector<std::string>& names) {
  auto v = read_and_verify(dir, names);
  if (!v.check.ok()) throw_damaged(v.check);
  return std::move(v.bytes);
}

std::string save_checkpoint(Communicator& comm, const std::string& run_dir, const TrainingState& state,
                            const CheckpointContents& c, const std::string& config_yaml, int64_t keep) {
  const fs::path root = checkpoints_dir(run_dir);
  const fs::path final_dir = root / checkpoint_name(state.step);
  if (comm.rank() == 0) {
    std::vector<std::pair<std::string, std::string>> files = {
        {"model.pt", serialise(c.model)},
        {"ema.pt", serialise(c.ema)},
        {"optimizer.pt", serialise(c.optimizer)}};
    for (size_t k = 0; k < c.ema_profiles.size(); ++k) files.emplace_back(ema_profile_file(k), serialise(*c.ema_profiles[k]));
    files.emplace_back(kConfigFile, config_yaml);
    files.emplace_back(kStateFile, state_to_json(state).dump(2) + "\n");
    write_checkpoint_directory(root, state.step, files);
    // Only complete checkpoints count; damaged ones moved aside (corrupt-*) and
    // directories without a manifest are never deleted here.
    std::vector<fs::path> complete;
    for (const auto& [step, dir] : checkpoint_dirs(run_dir))
      if (fs::exists(dir / kManifestFile)) complete.push_back(dir);
    for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 1)); i < complete.size(); ++i)
      fs::remove_all(complete[i]);
  }
  comm.barrier("checkpoint written");
  return final_dir.string();
}

std::string write_checkpoint_with_ema(const std::string& source_dir, const std::string& out_run_dir,
                                      const torch::nn::Module& ema) {
  auto v = read_and_verify(source_dir, kFiles, /*listed_profiles=*/true);
  if (!v.check.ok()) throw_damaged(v.check);
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto& check : v.check.files) {
    if (check.name == kManifestFile) continue;
    files.emplace_back(check.name, check.name == "ema.pt" ? serialise(ema) : v.bytes.at(check.name));
  }
  return write_checkpoint_directory(checkpoints_dir(out_run_dir), v.state.step, files).string();
}

std::optional<ResumePoint> resume_from_newest_checkpoint(Communicator& comm, const std::string& run_dir,
                                                         const CheckpointContents& contents) {
  // Rank 0 decides and reads; the others receive its decision and bytes.
  std::string chosen_dir;
  std::map<std::string, std::string> bytes;
  if (comm.rank() == 0) {
    if (auto chosen = newest_verified(run_dir, /*move_aside=*/true)) {
      chosen_dir = chosen->dir.string();
      bytes = std::move(chosen->verified.bytes);
    }
  }
  comm.broadcast_bytes(chosen_dir, 0, "resume: the checkpoint rank 0 chose");
  if (chosen_dir.empty()) return std::nullopt;
  std::vector<std::string> names = {"model.pt", "ema.pt", "optimizer.pt", kStateFile};
  for (size_t k = 0; k < contents.ema_profiles.size(); ++k) names.push_back(ema_profile_file(k));
  for (const auto& name : names) {
    // A file rank 0 does not have is sent as a flag, so every rank raises the same error.
    std::string present = comm.rank() == 0 ? (bytes.count(name) ? "1" : "0") : "";
    comm.broadcast_bytes(present, 0, "resume: whether the checkpoint has " + name);
    if (present == "1") comm.broadcast_bytes(bytes[name], 0, "resume: " + name + " from rank 0");
    else bytes.erase(name);
  }
  ResumePoint point;
  point.dir = chosen_dir;
  try {
    point.state = parse_state(bytes[kStateFile], step_of_name(fs::path(chosen_dir).filename().string()),
                              "the directory's name");
  } catch (const std::exception& e) {
    throw CheckpointError("checkpoint file '" + (fs::path(chosen_dir) / kStateFile).string() + "': " + e.what());
  }
  load_contents(bytes, chosen_dir, contents);
  return point;
}

TrainingState load_checkpoint(const std::string& dir, const CheckpointContents& c) {
  auto v = read_and_verify(dir, kFiles, /*listed_profiles=*/true);
  if (!v.check.ok()) throw_damaged(v.check);
  load_contents(v.bytes, dir, c);
  return v.state;
}

void load_ema_weights(const std::string& dir, torch::nn::Module& model) { load_checkpoint_module(dir, "ema.pt", model); }

void load_checkpoint_module(const std::string& dir, const std::string& name, torch::nn::Module& module) {
  auto v = read_and_verify(dir, {name});
  if (!v.check.ok()) throw_damaged(v.check);
  load_archive(module, v.bytes.at(name), fs::path(dir) / name);
}

TrainingState read_training_state(const std::string& dir) {
  const fs::path path = fs::path(dir) / kStateFile;
  std::string text;
  try {
    if (!read_file_bytes(path.string(), text)) throw CheckpointError("checkpoint file '" + path.string() + "' is missing");
    return parse_state(text, step_of_name(without_trailing_slash(dir).filename().string()), "the directory's name");
  } catch (const CheckpointError&) {
    throw;
  } catch (const std::exception& e) {
    throw CheckpointError("checkpoint file '" + path.string() + "': " + e.what());
  }
}

std::string read_checkpoint_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / kConfigFile;
  std::string text;
  if (!read_file_bytes(path.string(), text)) throw CheckpointError("checkpoint file '" + path.string() + "' is missing");
  return text;
}

}  // namespace difftrain
