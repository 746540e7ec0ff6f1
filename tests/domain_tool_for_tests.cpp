// Helper for tests/check_domain_features.py: what the C++ side computes with a
// classifier file, for comparison with Python's torch.jit.load.
//   domain_tool_for_tests apply MODEL IMAGES.bin B H W FEATURES.bin LOGITS.bin
// IMAGES.bin: float32 (B, 3, H, W) in [0, 1]; the outputs are float32 (B, D) and (B, K),
// computed through FeatureExtractor (forward) and DomainClassifier (classify).
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "eval/domain_features.h"
#include "eval/feature_extractor.h"

namespace {

void write_tensor(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat32).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() != 8 || args[0] != "apply") {
      std::fprintf(stderr, "usage: domain_tool_for_tests apply MODEL IMAGES.bin B H W FEATURES.bin LOGITS.bin\n");
      return 2;
    }
    const int64_t b = std::stoll(args[3]), h = std::stoll(args[4]), w = std::stoll(args[5]);
    std::ifstream in(args[2], std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
    if (static_cast<int64_t>(bytes.size()) != b * 3 * h * w * 4) throw std::runtime_error(args[2] + " has the wrong size");
    const torch::Tensor images = torch::from_blob(bytes.data(), {b, 3, h, w}, torch::kFloat32).clone();
    difftrain::eval::FeatureExtractor extractor(args[1]);
    difftrain::eval::DomainClassifier classifier(args[1]);
    write_tensor(args[6], extractor.features(images));
    write_tensor(args[7], classifier.classify(images));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "domain_tool_for_tests: %s\n", e.what());
    return 1;
  }
}
