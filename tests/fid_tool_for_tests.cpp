// Helper for tests/check_fid_scipy.py. Feature files are raw float64, row-major (N, D).
//   fid_tool_for_tests fid A.bin B.bin D         prints the FID of the two sets (17 digits)
//   fid_tool_for_tests save A.bin D out.h5       writes the set's FID stats file
//   fid_tool_for_tests extract model.pt B H W    prints the shape of the features of B random images
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "eval/feature_extractor.h"
#include "eval/fid.h"
#include "eval/fid_stats_io.h"

namespace {

using difftrain::eval::FeatureStats;

// Added in uneven chunks, as batches would be.
FeatureStats stats_of_file(const std::string& path, int64_t dim) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  const int64_t n = static_cast<int64_t>(bytes.size() / sizeof(double)) / dim;
  if (n * dim * static_cast<int64_t>(sizeof(double)) != static_cast<int64_t>(bytes.size())) {
    throw std::runtime_error(path + " is not a whole number of float64 rows of " + std::to_string(dim));
  }
  const torch::Tensor x =
      torch::from_blob(const_cast<char*>(bytes.data()), {n, dim}, torch::kFloat64).clone();  // (N, D)
  FeatureStats stats(dim);
  for (int64_t start = 0, chunk = 7; start < n; start += chunk, chunk = chunk * 2 + 1) {
    stats.add(x.narrow(0, start, std::min(chunk, n - start)));
  }
  return stats;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 4 && args[0] == "fid") {
      const int64_t dim = std::stoll(args[3]);
      const auto a = difftrain::eval::gaussian_of(stats_of_file(args[1], dim), args[1]);
      const auto b = difftrain::eval::gaussian_of(stats_of_file(args[2], dim), args[2]);
      std::printf("%.17g\n", difftrain::eval::frechet_distance(a, b));
      return 0;
    }
    if (args.size() == 4 && args[0] == "save") {
      const auto g = difftrain::eval::gaussian_of(stats_of_file(args[1], std::stoll(args[2])), args[1]);
      difftrain::eval::save_gaussian_stats(args[3], g);
      return 0;
    }
    if (args.size() == 5 && args[0] == "extract") {
      difftrain::eval::FeatureExtractor extractor(args[1]);
      torch::manual_seed(0);
      const auto images = torch::rand({std::stoll(args[2]), 3, std::stoll(args[3]), std::stoll(args[4])});
      const auto f = extractor.features(images);
      std::printf("%lld %lld %s\n", static_cast<long long>(f.size(0)), static_cast<long long>(f.size(1)),
                  torch::isfinite(f).all().item<bool>() ? "finite" : "non-finite");
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "usage: fid_tool_for_tests fid A.bin B.bin D | save A.bin D out.h5 | extract model.pt B H W\n";
  return 2;
}
