#include "model/frozen_module.h"

#include <filesystem>
#include <stdexcept>

#include "model/frozen_text_encoder.h"  // file_sha256
#include "model/torchscript_error.h"

namespace difftrain::model {

FrozenModuleFile load_frozen_module(const std::string& path, const std::string& role) {
  const auto fail = [&](const std::string& message) { return std::runtime_error(role + " " + path + ": " + message); };
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw fail("file does not exist");
  if (!std::filesystem::is_regular_file(path, ec)) throw fail("is not a regular file");
  FrozenModuleFile file;
  file.sha256 = file_sha256(path);
  file.identity = std::filesystem::path(path).filename().string() + " sha256:" + file.sha256;
  try {
    file.module = torch::jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    throw fail("cannot load as TorchScript (expected a file saved by torch.jit.save): " + torchscript_error_line(e));
  }
  file.module.eval();
  const auto forward = file.module.find_method("forward");
  if (!forward) throw fail("the module has no forward method");
  file.forward_inputs = forward->function().getSchema().arguments().size() - 1;  // without self
  return file;
}

}  // namespace difftrain::model
