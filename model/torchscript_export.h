// Turns a C++ torch::nn::Module plus a forward function into a TorchScript
// module by tracing (the C++ counterpart of torch.jit.trace), so models
// trained here load in Python with torch.jit.load and vice versa.
//
// The traced module owns `module`'s parameters and buffers (names flattened:
// "down_blocks.0.res.conv1.weight" -> "down_blocks_0_res_conv1_weight") and
// any `extra_buffers`; `forward` must compute only from those tensors and its
// inputs. Shapes read into C++ integers become constants of the trace, so the
// modules traced here keep batch sizes symbolic (see model/attention.cpp).
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace torch::jit {
struct Module;
}

namespace difftrain::model {

using TracedForward = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

// Traces and saves to `path` (eval/atomic_write.h: a temporary name, then renamed;
// a write error such as a full disk throws std::runtime_error naming `path`).
void export_torchscript(torch::nn::Module& module, const std::string& type_name, const TracedForward& forward,
                        const std::vector<torch::Tensor>& example_inputs,
                        const std::vector<std::pair<std::string, torch::Tensor>>& extra_buffers,
                        const std::string& path);

// A constant the traced module carries besides its tensors, read in Python as module.name:
// a double becomes a float attribute, an int64_t an int attribute (the autoencoder's
// latent_scale, latent_channels, ...). Buffers stay the way to carry tensors.
struct TracedAttribute {
  std::string name;
  std::variant<double, int64_t> value;
};

// As above, with `attributes` registered on the module as well.
void export_torchscript(torch::nn::Module& module, const std::string& type_name, const TracedForward& forward,
                        const std::vector<torch::Tensor>& example_inputs,
                        const std::vector<std::pair<std::string, torch::Tensor>>& extra_buffers,
                        const std::vector<TracedAttribute>& attributes, const std::string& path);

}  // namespace difftrain::model
