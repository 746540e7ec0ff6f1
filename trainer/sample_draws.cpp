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
                         int64_t timesteps, const std::vector<int64_t>& image_shape, double drop_probability,
                         const std::function<int64_t(double)>& timestep_of_normal, double offset_noise) {
  std::vector<torch::Tensor> t, noise, drop, flip;
  for (int64_t j = 0; j < batch; ++j) {
    const uint64_t position = static_cast<uint64_t>(first_position + j * stride);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix(mix(mix(seed) ^ static_cast<uint64_t>(epoch)) ^ position));
    if (timestep_of_normal) {
      const int64_t drawn = timestep_of_normal(torch::randn({1}, gen, torch::kFloat64).item<double>());
      TORCH_CHECK(drawn >= 0 && drawn < timesteps, "timestep draw ", drawn, " outside [0, ", timesteps, ")");
      t.push_back(torch::full({1}, drawn, torch::kInt64));
    } else {
      t.push_back(torch::randint(0, timesteps, {1}, gen, torch::kInt64));
    }
    noise.push_back(torch::randn(image_shape, gen, torch::kFloat32));
    drop.push_back(torch::rand({1}, gen) < drop_probability);
    flip.push_back(torch::rand({1}, gen) < 0.5);
    if (offset_noise > 0) {
      std::vector<int64_t> per_channel(image_shape.size(), 1);
      per_channel[0] = image_shape[0];  // (C, 1, 1): one constant per channel
      noise.back() += offset_noise * torch::randn(per_channel, gen, torch::kFloat32);
    }
  }
  return {torch::cat(t), torch::stack(noise), torch::cat(drop), torch::cat(flip)};
}

}  // namespace difftrain
