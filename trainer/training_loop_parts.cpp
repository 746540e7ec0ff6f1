#include "trainer/training_loop_parts.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "data/shard_format.h"
#include "data/synthetic_shapes.h"
#include "distributed/communicator.h"
#include "trainer/loss_scaler.h"
#include "trainer/stop_signal.h"

namespace difftrain {
namespace fs = std::filesystem;

data::ImageGeometry image_geometry_of(const Config& c) { return {c.data.image_size, c.data.image_size, c.data.channels}; }

void check_user_data_dir(const Config& c) {
  const std::string hint =
      "; expected a directory of *.h5 shards (make them with `difftrain make-shards`, docs/SHARD_FORMAT.md), "
      "or set data.synthetic=true to write the built-in shapes dataset there";
  std::error_code ec;
  if (!fs::exists(c.data.dir, ec)) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": does not exist" + hint);
  if (!fs::is_directory(c.data.dir, ec)) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": is not a directory" + hint);
  bool has_shard = false;
  for (const auto& entry : fs::directory_iterator(c.data.dir, ec))
    has_shard = has_shard || (entry.is_regular_file() && entry.path().extension() == data::kShardExtension);
  if (!has_shard) throw ConfigError("config key 'data.dir' = " + c.data.dir + ": holds no *.h5 shard" + hint);
}

void prepare_data(const Config& c, Communicator& comm) {
  if (comm.rank() == 0 && !c.data.synthetic) check_user_data_dir(c);
  if (comm.rank() == 0 && c.data.synthetic) {
    data::SyntheticSpec spec;
    spec.count = c.data.synthetic_count;
    spec.image_size = c.data.image_size;
    spec.seed = static_cast<uint64_t>(c.run.seed) + 1234;
    const auto paths = data::write_synthetic_shards(c.data.dir, spec);
    spdlog::info("data: {} shards of built-in captioned shapes in {}", paths.size(), c.data.dir);
  }
  comm.barrier("data: rank 0 writes the built-in dataset");
}

data::LoaderOptions loader_options_of(const Config& c, const Communicator& comm) {
  data::LoaderOptions options;
  options.shard_dir = c.data.dir;
  options.geometry = image_geometry_of(c);
  options.batch_size = c.train.batch_size;
  options.rank = comm.rank();
  options.world_size = comm.world_size();
  options.seed = static_cast<uint64_t>(c.run.seed);
  options.prefetch_batches = static_cast<int>(c.data.prefetch_batches);
  return options;
}

std::unique_ptr<monitoring::TrainingMetrics> open_training_metrics(const Config& c, int rank, int local_rank) {
  if (!c.monitoring.enabled && c.monitoring.pushgateway.empty()) return nullptr;
  monitoring::MetricsOptions options;
  if (c.monitoring.enabled) options.bind_address = c.monitoring.host + ":" + std::to_string(c.monitoring.port + local_rank);
  options.rank = rank;
  options.run = c.run.name;
  options.pushgateway = c.monitoring.pushgateway;
  auto metrics = std::make_unique<monitoring::TrainingMetrics>(options);
  if (rank == 0 && c.monitoring.enabled)
    spdlog::info("metrics: http://{}/metrics (+ local rank for the other ranks)", metrics->bound_address());
  return metrics;
}

TrainingState resume_or_start(Communicator& comm, const Config& config, const CheckpointContents& contents,
                              DynamicLossScaler& scaler,
                              const std::function<void(const std::string& dir, int64_t step)>& check_config) {
  const bool lead = comm.rank() == 0;
  TrainingState state;
  state.world_size = comm.world_size();
  // Rank 0 picks the newest checkpoint that verifies and sends its bytes: ranks need no shared disk.
  if (auto resumed = resume_from_newest_checkpoint(comm, config.run.dir, contents)) {
    state = resumed->state;
    scaler.restore(state.loss_scale, state.loss_scale_clean_steps);
    if (lead) spdlog::info("resumed from {} at step {}", resumed->dir, state.step);
    // A changed model/data key ends the job here (rank 0's error aborts every rank); other changes are recorded.
    if (lead) check_config(resumed->dir, state.step);
    if (state.world_size != comm.world_size() && lead)
      spdlog::info("checkpoint was written by {} ranks, resuming with {}: data position kept by sample count",
                   state.world_size, comm.world_size());
    state.world_size = comm.world_size();
  }
  // Identical starting weights on every rank, whatever each rank loaded or initialised.
  comm.broadcast(contents.model.parameters(), 0, "initial weights");
  comm.broadcast(contents.ema.parameters(), 0, "initial EMA weights");
  for (auto* profile : contents.ema_profiles) comm.broadcast(profile->parameters(), 0, "initial EMA profile weights");
  return state;
}

double global_grad_norm(const std::vector<torch::Tensor>& grads) {
  double sum = 0;
  for (const auto& g : grads) sum += g.pow(2).sum().item<double>();
  return std::sqrt(sum);
}

void clip_gradients(const std::vector<torch::Tensor>& grads, double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return;
  torch::NoGradGuard no_grad;
  const double factor = max_norm / (norm + 1e-6);
  for (const auto& g : grads) g.mul_(factor);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
}

bool all_finite(const std::vector<torch::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (!torch::isfinite(t).all().item<bool>()) return false;
  return true;
}

void advance_data_position(TrainingState& state, const data::LoaderPosition& last, int64_t global_batch,
                           int64_t accum, int64_t batches_per_epoch) {
  state.images_seen += global_batch * accum;
  state.samples_in_epoch = (last.batch + 1) * global_batch;
  state.epoch = last.epoch;
  if (last.batch + 1 == batches_per_epoch) state.epoch += 1, state.samples_in_epoch = 0;
}

bool stop_requested_on_any_rank(Communicator& comm) {
  return comm.allreduce_sum({pending_stop_signal() != 0 ? 1.0 : 0.0}, "stop flag")[0] > 0;
}

std::set<int64_t> injected_steps(const char* variable, int rank) {
  std::set<int64_t> steps;
  const char* spec = std::getenv(variable);
  if (spec == nullptr) return steps;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    const auto at = item.find('@');
    try {
      if (at == std::string::npos || std::stoi(item.substr(at + 1)) == rank) steps.insert(std::stoll(item.substr(0, at)));
    } catch (const std::exception&) {
      throw std::runtime_error(std::string(variable) + "='" + std::string(spec) +
                               "': expected comma-separated steps, each optionally followed by @rank");
    }
  }
  return steps;
}

void append_jsonl(const fs::path& path, const nlohmann::json& line) {
  std::ofstream out(path, std::ios::app);
  out << line.dump() << "\n";
}

}  // namespace difftrain
