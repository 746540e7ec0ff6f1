// The random draws of one training batch: each sample's timestep, noise and
// condition-dropout decision come from a generator seeded by (run seed, epoch,
// the sample's position in that epoch's permutation). They depend on which
// sample it is, never on the number of ranks or the per-rank batch size, so
// 2 ranks x batch b and 1 rank x batch 2b train on identical draws (tested),
// and a resumed run needs no generator state: its data position is enough.
// The flip is drawn after the others and the offset noise last, only when it is
// on, so turning data.random_flip or diffusion.offset_noise on or off leaves every
// other draw unchanged.
#pragma once

#include <torch/types.h>

#include <functional>
#include <vector>

namespace difftrain {

struct SampleDraws {
  torch::Tensor timesteps;  // (B) int64 in [0, T)
  torch::Tensor noise;      // (B, C, H, W) float32
  torch::Tensor drop;       // (B) bool: caption replaced by the null condition
  torch::Tensor flip;       // (B) bool: image mirrored left-right (used when data.random_flip)
};

// Sample j of this rank's batch sits at epoch position first_position + j * stride
// (the loader gives rank r positions r, r + world, ...: first = batch * B * world + r, stride = world).
//
// Timesteps are uniform in [0, T) unless `timestep_of_normal` is given: then each is that function
// of one standard normal draw (log-normal timesteps, diffusion/loss_weighting.h).
// offset_noise > 0 adds offset_noise · N(0, 1) per image and channel, constant over the pixels, to the
// noise (Guttenberg 2023, "Diffusion with Offset Noise"): the model learns to change an image's mean
// brightness and colour, which i.i.d. noise hardly perturbs at high t.
SampleDraws draw_samples(uint64_t seed, int64_t epoch, int64_t first_position, int64_t stride, int64_t batch,
                         int64_t timesteps, const std::vector<int64_t>& image_shape, double drop_probability,
                         const std::function<int64_t(double)>& timestep_of_normal = {}, double offset_noise = 0);

}  // namespace difftrain
