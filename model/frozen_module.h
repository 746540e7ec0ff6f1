// Loading a frozen TorchScript file (a text encoder, a VAE encoder or decoder): the
// checks and identity every such file gets before its own contract is probed.
#pragma once

#include <torch/script.h>

#include <cstddef>
#include <string>

namespace difftrain::model {

struct FrozenModuleFile {
  torch::jit::Module module;  // in eval mode, on the CPU
  std::string sha256;         // of the file, lowercase hex
  std::string identity;       // "<file name> sha256:<hex>", as the shards' *_encoder attributes record it
  size_t forward_inputs = 0;  // arguments of forward, without self
};

// Throws std::runtime_error "<role> <path>: ..." for a missing file, one that is not a
// regular file, one that is not TorchScript, or a module without forward.
FrozenModuleFile load_frozen_module(const std::string& path, const std::string& role);

}  // namespace difftrain::model
