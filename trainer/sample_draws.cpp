#include "trainer/sample_draws.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace difftrain {
namespace {

// splitmix64 (Steele et al. 2014): decorrelates nearby seeds.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

SampleDraws draw_samples(uint64_t seed, int64_t epoch, int64_t first_position, int64_t stride, int64_t batch,
                         int64_t timesteps, const std::vector<int64_t>& image_shape, double drop_probability) {
  std::vector<torch::Tensor> t, noise, drop, flip;
  for (int64_t j = 0; j < batch; ++j) {
    const uint64_t position = static_cast<uint64_t>(first_position + j * stride);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix(mix(mix(seed) ^ static_cast<uint64_t>(epoch)) ^ position));
    t.push_back(torch::randint(0, timesteps, {1}, gen, torch::kInt64));
    noise.push_back(torch::randn(image_shape, gen, torch::kFloat32));
    drop.push_back(torch::rand({1}, gen) < drop_probability);
    flip.push_back(torch::rand({1}, gen) < 0.5);
  }
  return {torch::cat(t), torch::stack(noise), torch::cat(drop), torch::cat(flip)};
}

}  // namespace difftrain
