#include "model/frozen_vae.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <stdexcept>

#include "model/frozen_module.h"
#include "model/torchscript_error.h"

namespace difftrain::model {
namespace {

std::string shape_text(c10::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + (sizes.size() == 1 ? ",)" : ")");
}

// A float attribute written by Python (float), by the C++ tracer (a 0-d tensor buffer) or as an int.
std::optional<double> number_attribute(const torch::jit::Module& module, const std::string& name,
                                       const std::function<std::runtime_error(const std::string&)>& fail) {
  if (!module.hasattr(name)) return std::nullopt;
  const torch::IValue value = module.attr(name);
  double number = 0;
  if (value.isDouble()) {
    number = value.toDouble();
  } else if (value.isInt()) {
    number = static_cast<double>(value.toInt());
  } else if (value.isTensor() && value.toTensor().numel() == 1) {
    number = value.toTensor().to(torch::kDouble).item<double>();
  } else {
    throw fail("attribute '" + name + "' is " + value.tagKind() + ", expected a float");
  }
  if (!std::isfinite(number)) throw fail("attribute '" + name + "' is not finite");
  return number;
}

}  // namespace

FrozenVae::FrozenVae(const std::string& path, const std::string& role, std::vector<int64_t> input_shape)
    : path_(path), role_(role), input_shape_(std::move(input_shape)) {
  const auto fail = [&](const std::string& message) { return std::runtime_error(role_ + " " + path_ + ": " + message); };
  FrozenModuleFile file = load_frozen_module(path, role_);
  module_ = file.module;
  sha256_ = file.sha256;
  identity_ = file.identity;
  const size_t inputs = file.forward_inputs;
  if (inputs != 1) {
    throw fail("forward takes " + std::to_string(inputs) + " input(s), expected 1: a float32 (B, C, H, W) tensor");
  }
  latent_scale_ = number_attribute(module_, "latent_scale", fail);
  latent_shift_ = number_attribute(module_, "latent_shift", fail);
  if (latent_scale_ && *latent_scale_ <= 0) throw fail("attribute 'latent_scale' must be > 0");
  std::vector<int64_t> probe_shape = {2};
  probe_shape.insert(probe_shape.end(), input_shape_.begin(), input_shape_.end());
  // A fixed pseudo-random probe in [-1, 1]: what both roles see in use.
  torch::Tensor probe = torch::rand(probe_shape, torch::Generator(at::detail::createCPUGenerator(1234))) * 2 - 1;
  const torch::Tensor out = run(probe);
  output_shape_.assign(out.sizes().begin() + 1, out.sizes().end());
}

torch::Tensor FrozenVae::run(const torch::Tensor& input) const {
  const auto fail = [&](const std::string& message) { return std::runtime_error(role_ + " " + path_ + ": " + message); };
  const std::string given = "on input " + shape_text(input.sizes());
  torch::IValue output;
  try {
    torch::NoGradGuard no_grad;
    output = module_.forward({input.to(torch::kFloat).contiguous()});
  } catch (const std::exception& e) {
    throw fail("forward failed " + given + " (float32 (B, C, H, W), expected input (B, " +
               shape_text(input_shape_).substr(1) + "): " + torchscript_error_line(e));
  }
  if (!output.isTensor()) throw fail("forward returned " + output.tagKind() + ", expected one tensor (B, c, h, w)");
  const torch::Tensor out = output.toTensor();
  if (out.dim() != 4 || out.size(0) != input.size(0) || out.numel() == 0) {
    throw fail("forward " + given + " returned shape " + shape_text(out.sizes()) + ", expected (B, c, h, w) with B = " +
               std::to_string(input.size(0)));
  }
  if (!torch::isFloatingType(out.scalar_type())) {
    throw fail("forward returned dtype " + std::string(c10::toString(out.scalar_type())) +
               ", expected a floating-point type");
  }
  if (!output_shape_.empty() && std::vector<int64_t>(out.sizes().begin() + 1, out.sizes().end()) != output_shape_) {
    throw fail("forward " + given + " returned shape " + shape_text(out.sizes()) + ", but the probe gave (B, " +
               shape_text(output_shape_).substr(1));
  }
  torch::Tensor result = out.to(torch::kFloat).contiguous();
  const torch::Tensor finite = torch::isfinite(result).flatten(1).all(1);
  if (!finite.all().item<bool>()) {
    throw fail("forward " + given + " returned non-finite values (NaN or inf) for sample " +
               std::to_string((~finite).nonzero()[0][0].item<int64_t>()));
  }
  return result;
}

}  // namespace difftrain::model
