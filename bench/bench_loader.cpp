// The training loader's read rate: images/s that data::Loader delivers from a
// shard directory (one rank, the trainer's read-ahead), for comparison with the
// images/s training consumes (bench/bench_make_shards.py does the comparison).
// Usage: bench_loader --dir SHARDS --size N [--channels 3] [--batch 32] [--batches 400] [--repeats 3]
// Prints one JSON line: {"images_per_second": best of the repeats, ...}.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

#include "data/loader.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"data::Loader read rate"};
  difftrain::data::LoaderOptions options;
  int64_t size = 16, channels = 3, batches = 400;
  int repeats = 3;
  app.add_option("--dir", options.shard_dir, "shard directory")->required();
  app.add_option("--size", size, "image side the shards hold");
  app.add_option("--channels", channels, "channels the shards hold");
  options.batch_size = 32;
  app.add_option("--batch", options.batch_size, "batch size per rank");
  app.add_option("--batches", batches, "batches read per repeat (after one warm-up batch)");
  app.add_option("--repeats", repeats, "repeats; the best is reported (least disturbed by other load)");
  CLI11_PARSE(app, argc, argv);
  options.geometry = {size, size, channels};

  double best = 0;
  uint64_t checksum = 0;  // keeps the reads from being optimised away
  for (int r = 0; r < repeats; ++r) {
    difftrain::data::Loader loader(options, {});
    loader.next();  // the first batch includes opening the shards and starting the thread
    const auto start = Clock::now();
    for (int64_t b = 0; b < batches; ++b) {
      const auto batch = loader.next();
      checksum += batch.images[static_cast<size_t>(b) % batch.images.size()];
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, static_cast<double>(batches * options.batch_size) / seconds);
  }
  std::printf("{\"images_per_second\": %.1f, \"size\": %lld, \"batch\": %lld, \"checksum\": %llu}\n", best,
              static_cast<long long>(size), static_cast<long long>(options.batch_size),
              static_cast<unsigned long long>(checksum));
  return 0;
}
