#include "model/torchscript_export.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/script.h>

#include <algorithm>
#include <sstream>

#include "eval/atomic_write.h"

namespace difftrain::model {
namespace {

std::string flat_name(std::string name) {
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

}  // namespace

void export_torchscript(torch::nn::Module& module, const std::string& type_name, const TracedForward& forward,
                        const std::vector<torch::Tensor>& example_inputs,
                        const std::vector<std::pair<std::string, torch::Tensor>>& extra_buffers,
                        const std::string& path) {
  export_torchscript(module, type_name, forward, example_inputs, extra_buffers, {}, path);
}

void export_torchscript(torch::nn::Module& module, const std::string& type_name, const TracedForward& forward,
                        const std::vector<torch::Tensor>& example_inputs,
                        const std::vector<std::pair<std::string, torch::Tensor>>& extra_buffers,
                        const std::vector<TracedAttribute>& attributes, const std::string& path) {
  torch::NoGradGuard no_grad;
  module.eval();
  torch::jit::Module traced(c10::QualifiedName("__torch__.difftrain." + type_name));
  for (const auto& p : module.named_parameters()) traced.register_parameter(flat_name(p.key()), p.value(), false);
  for (const auto& b : module.named_buffers()) traced.register_buffer(flat_name(b.key()), b.value());
  for (const auto& [name, tensor] : extra_buffers) traced.register_buffer(name, tensor);
  for (const auto& a : attributes) {
    if (std::holds_alternative<double>(a.value))
      traced.register_attribute(a.name, c10::FloatType::get(), std::get<double>(a.value));
    else
      traced.register_attribute(a.name, c10::IntType::get(), std::get<int64_t>(a.value));
  }

  torch::jit::Stack inputs(example_inputs.begin(), example_inputs.end());
  auto traced_fn = [&](torch::jit::Stack stack) -> torch::jit::Stack {
    std::vector<torch::Tensor> tensors;
    for (const auto& v : stack) tensors.push_back(v.toTensor());
    return {forward(tensors)};
  };
  auto state = torch::jit::tracer::trace(
                   inputs, traced_fn, [](const torch::autograd::Variable&) { return std::string(); },
                   /*strict=*/true, /*force_outplace=*/false, &traced)
                   .first;
  auto function = traced._ivalue()->compilation_unit()->create_function(
      c10::QualifiedName(*traced.type()->name(), "forward"), state->graph);
  traced.type()->addMethod(function);

  // Serialised to memory and written by a checked write: LibTorch's own file
  // writer aborts the process when the disk fills.
  std::ostringstream bytes;
  traced.save(bytes);
  const std::string data = bytes.str();
  eval::write_file_atomically(path, data.data(), data.size());
}

}  // namespace difftrain::model
