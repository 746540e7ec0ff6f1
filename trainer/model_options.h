// The configuration's model section -> the UNet's constructor options. Lives beside
// the configuration so model/ depends on nothing in trainer/.
//   unet_options_from: ModelConfig (+ image geometry from the data section) -> UNetOptions
#pragma once

#include <cstdint>

#include "model/unet.h"
#include "trainer/config.h"

namespace difftrain {

model::UNetOptions unet_options_from(const ModelConfig& config, int64_t image_size, int64_t image_channels);

}  // namespace difftrain
