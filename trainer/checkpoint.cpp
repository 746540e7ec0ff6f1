#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "distributed/communicator.h"

namespace difftrain {
namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";
constexpr const char* kTempPrefix = ".tmp-step-";
constexpr const char* kStateFile = "state.json";

void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw CheckpointError("cannot open '" + path.string() + "' to fsync it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw CheckpointError("fsync of '" + path.string() + "' failed");
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw CheckpointError("cannot write '" + path.string() + "'");
  fsync_path(path);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError("checkpoint file '" + path.string() + "' is missing or unreadable");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Modules and optimizers serialise themselves into an archive.
void write_archive(torch::serialize::OutputArchive& archive, const torch::nn::Module& m) { m.save(archive); }
void write_archive(torch::serialize::OutputArchive& archive, const torch::optim::Optimizer& o) { o.save(archive); }
void read_archive(torch::serialize::InputArchive& archive, torch::nn::Module& m) { m.load(archive); }
void read_archive(torch::serialize::InputArchive& archive, torch::optim::Optimizer& o) { o.load(archive); }

template <class T>
void save_torch(const T& value, const fs::path& path) {
  torch::serialize::OutputArchive archive;
  write_archive(archive, value);
  archive.save_to(path.string());
  fsync_path(path);
}

template <class T>
void load_torch(T& value, const fs::path& path) {
  if (!fs::exists(path)) throw CheckpointError("checkpoint file '" + path.string() + "' is missing");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    read_archive(archive, value);
  } catch (const c10::Error& e) {
    throw CheckpointError("checkpoint file '" + path.string() + "' cannot be loaded: " + e.what_without_backtrace());
  }
}

std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  const fs::path dir = checkpoints_dir(run_dir);
  if (!fs::is_directory(dir)) return found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind(kPrefix, 0) != 0) continue;
    if (!fs::exists(entry.path() / kStateFile)) continue;
    try {
      found.emplace_back(std::stoll(name.substr(std::string(kPrefix).size())), entry.path());
    } catch (...) {
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

nlohmann::json state_to_json(const TrainingState& s) {
  return {{"step", s.step},
          {"images_seen", s.images_seen},
          {"epoch", s.epoch},
          {"samples_in_epoch", s.samples_in_epoch},
          {"loss_scale", s.loss_scale},
          {"loss_scale_clean_steps", s.loss_scale_clean_steps},
          {"world_size", s.world_size}};
}

}  // namespace

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%09lld", kPrefix, static_cast<long long>(step));
  return buf;
}

std::string checkpoints_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  auto all = complete_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

std::string resolve_checkpoint(const std::string& path) {
  if (!fs::exists(path)) throw CheckpointError("checkpoint directory '" + path + "' does not exist");
  if (fs::exists(fs::path(path) / kStateFile)) return path;
  if (auto latest = latest_checkpoint(path)) return *latest;
  throw CheckpointError("'" + path + "' is neither a checkpoint (no " + kStateFile +
                        ") nor a run directory with complete checkpoints under checkpoints/");
}

void remove_incomplete_checkpoints(const std::string& run_dir) {
  const fs::path dir = checkpoints_dir(run_dir);
  if (!fs::is_directory(dir)) return;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind(kTempPrefix, 0) == 0) fs::remove_all(entry.path());
}

std::string save_checkpoint(Communicator& comm, const std::string& run_dir, const TrainingState& state,
                            const CheckpointContents& c, const std::string& config_yaml, int64_t keep) {
  const fs::path root = checkpoints_dir(run_dir);
  const fs::path final_dir = root / checkpoint_name(state.step);
  const fs::path temp_dir = root / (kTempPrefix + std::to_string(state.step));
  if (comm.rank() == 0) {
    fs::create_directories(root);
    fs::remove_all(temp_dir);
    fs::create_directories(temp_dir);
    save_torch(c.model, temp_dir / "model.pt");
    save_torch(c.ema, temp_dir / "ema.pt");
    save_torch(c.optimizer, temp_dir / "optimizer.pt");
    write_text(temp_dir / "config.yaml", config_yaml);
    write_text(temp_dir / kStateFile, state_to_json(state).dump(2) + "\n");
    fsync_path(temp_dir);
    fs::remove_all(final_dir);  // a re-run of the same step replaces it
    fs::rename(temp_dir, final_dir);
    fsync_path(root);
    auto all = complete_checkpoints(run_dir);
    for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i].second);
  }
  comm.barrier("checkpoint written");
  return final_dir.string();
}

TrainingState read_training_state(const std::string& dir) {
  const fs::path path = fs::path(dir) / kStateFile;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path));
    TrainingState s;
    s.step = j.at("step");
    s.images_seen = j.at("images_seen");
    s.epoch = j.at("epoch");
    s.samples_in_epoch = j.at("samples_in_epoch");
    s.loss_scale = j.at("loss_scale");
    s.loss_scale_clean_steps = j.at("loss_scale_clean_steps");
    s.world_size = j.at("world_size");
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError("checkpoint file '" + path.string() + "' is malformed: " + e.what());
  }
}

std::string read_checkpoint_config(const std::string& dir) { return read_text(fs::path(dir) / "config.yaml"); }

TrainingState load_checkpoint(const std::string& dir, CheckpointContents& c) {
  TrainingState state = read_training_state(dir);
  load_torch(c.model, fs::path(dir) / "model.pt");
  load_torch(c.ema, fs::path(dir) / "ema.pt");
  load_torch(c.optimizer, fs::path(dir) / "optimizer.pt");
  return state;
}

void load_ema_weights(const std::string& dir, torch::nn::Module& model) {
  load_torch(model, fs::path(dir) / "ema.pt");
}


}  // namespace difftrain
