#include "cli/make_shards_command.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <sstream>

#include "cli/fail.h"
#include "monitoring/progress.h"
#include "distributed/communicator.h"
#include "distributed/mpi_session.h"

namespace difftrain::cli {
namespace {


// "R,G,B" with each 0..255.
std::array<uint8_t, 3> parse_background(const std::string& text) {
  std::array<uint8_t, 3> rgb{};
  std::istringstream in(text);
  std::string part;
  int i = 0;
  while (std::getline(in, part, ',')) {
    size_t used = 0;
    int value = -1;
    try {
      value = std::stoi(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (i >= 3 || used != part.size() || value < 0 || value > 255) {
      i = -1;
      break;
    }
    rgb[static_cast<size_t>(i++)] = static_cast<uint8_t>(value);
  }
  if (i != 3) throw std::invalid_argument("--background '" + text + "': expected R,G,B with each 0..255, e.g. 255,255,255");
  return rgb;
}

data::MakeShardsOptions checked_options(const MakeShardsCommand& c) {
  data::MakeShardsOptions o = c.options;
  const auto require = [](bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
  };
  require(o.decode.size >= 1 && o.decode.size <= 8192,
          "--resolution " + std::to_string(o.decode.size) + ": expected a side length in pixels, 1..8192");
  require(o.decode.channels == 1 || o.decode.channels == 3,
          "--channels " + std::to_string(o.decode.channels) + ": expected 1 (grey) or 3 (RGB)");
  require(c.geometry == "crop" || c.geometry == "pad", "--geometry " + c.geometry + ": expected crop or pad");
  o.decode.geometry = data::fit_geometry_from_string(c.geometry);
  o.decode.background = parse_background(c.background);
  require(o.decode.min_size >= 1, "--min-size " + std::to_string(o.decode.min_size) + ": expected >= 1 pixel");
  require(o.shard_size >= 1, "--shard-size " + std::to_string(o.shard_size) + ": expected >= 1 image");
  require(o.max_tokens >= 1, "--max-tokens " + std::to_string(o.max_tokens) + ": expected >= 1");
  require(!o.caption_column.empty(), "--caption-column: expected a column name");
  require(c.timeout_seconds > 0, "--timeout: expected seconds > 0");
  return o;
}

// Rank 0's progress on stderr, at most ~2 updates a second: one line redrawn
// with '\r' on a terminal, otherwise a new line every 10 s (logs stay short).
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {}
  ~ProgressLine() {
    if (open_line_) std::fputc('\n', stderr);
  }

  void update(int64_t done, int64_t total) {
    if (!enabled_ || total == 0) return;
    const auto now = Clock::now();
    if (done == 0) start_ = now;
    const bool last = done == total;
    if (!last && seconds(last_print_, now) < (tty_ ? 0.5 : 10.0)) return;
    last_print_ = now;
    const std::string line = monitoring::format_rate_progress("make-shards", done, total, seconds(start_, now), "files");
    if (tty_) {
      std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
      open_line_ = !last;
      if (last) std::fputc('\n', stderr);
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
  bool enabled_, tty_, open_line_ = false;
  Clock::time_point start_ = Clock::now(), last_print_ = Clock::now();
};

}  // namespace

std::unique_ptr<MakeShardsCommand> add_make_shards_command(CLI::App& app) {
  auto c = std::make_unique<MakeShardsCommand>();
  auto* cmd = app.add_subcommand("make-shards",
                                 "convert captioned images (folder with metadata.jsonl, or .csv/.tsv) to shards");
  c->app = cmd;
  auto& o = c->options;
  cmd->add_option("--input", o.input, "image folder with metadata.jsonl files, or a .csv/.tsv list")->required();
  cmd->add_option("--out", o.out_dir, "output folder for the shards")->required();
  cmd->add_option("--resolution", o.decode.size, "side N of the N x N output images")->required();
  cmd->add_option("--channels", o.decode.channels, "3: RGB (default), 1: grey (BT.601 luma)");
  cmd->add_option("--geometry", c->geometry, "crop: short side to N, centre crop (default); pad: long side to N, pad");
  cmd->add_option("--background", c->background, "R,G,B under transparency and around padded images (255,255,255)");
  cmd->add_option("--min-size", o.decode.min_size, "reject images whose short side is below this (8)");
  cmd->add_option("--shard-size", o.shard_size, "entries per shard (4096)");
  cmd->add_option("--caption-column", o.caption_column, "metadata key / column of the caption (text)");
  cmd->add_option("--label-column", o.label_column, "metadata key / column of a class label (integer or string)");
  cmd->add_option("--max-tokens", o.max_tokens, "caption bytes the model keeps, for the summary (32)");
  cmd->add_option("--timeout", c->timeout_seconds,
                  "seconds a rank may wait for the others to finish their chunks (86400)");
  return c;
}

int run_make_shards_command(int argc, char** argv, const MakeShardsCommand& command) {
  MpiSession session(&argc, &argv);
  const int rank = session.rank(), world = session.world_size();
  set_error_rank(rank, world);
  try {
    const data::MakeShardsOptions options = checked_options(command);
    torch::set_num_threads(1);
    auto comm = make_communicator(session, torch::kCPU, {command.timeout_seconds});
    // Every rank lists the input itself (the same list); rank 0 alone records or checks the plan.
    const data::InputList list = data::list_inputs(options);
    if (rank == 0) data::prepare_output(options, list);
    comm->barrier("make-shards: plan recorded");

    ProgressLine progress(rank == 0);
    const data::ConvertStats stats = data::convert_chunks(
        options, list, rank, world, [&](int64_t done, int64_t total) { progress.update(done, total); });
    const auto totals = comm->allreduce_sum(
        {double(stats.chunks_converted), double(stats.chunks_kept)}, "make-shards: every rank's chunks done");
    if (rank == 0) {
      const data::MakeShardsSummary summary = data::finish_make_shards(options, list);
      std::printf("%s", data::format_summary(summary).c_str());
      std::printf("chunks: %lld converted now, %lld kept from an earlier run (%d rank%s)\n",
                  static_cast<long long>(totals[0]), static_cast<long long>(totals[1]), world,
                  world == 1 ? "" : "s");
      std::fflush(stdout);
      if (summary.written == 0) {
        fail("none of the " + std::to_string(summary.inputs) + " inputs could be used; the reasons are in " +
             summary.rejected_file);
      }
    }
    comm->barrier("make-shards: summary written");
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

}  // namespace difftrain::cli
