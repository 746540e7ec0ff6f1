// One line for an error a TorchScript module raised: c10::Error keeps its C++
// backtrace after the first line; torch::jit's interpreter errors (std::runtime_error)
// start with "The following operation failed in the TorchScript interpreter." and a
// Python-style traceback, whose last line holds the exception itself.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace difftrain::model {

inline std::string torchscript_error_line(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  const std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  if (text.find("Traceback") != std::string::npos) {
    size_t end = text.find_last_not_of("\n ");
    if (end != std::string::npos) {
      const size_t start = text.rfind('\n', end);
      return text.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
    }
  }
  const auto first = text.find('\n');
  return first == std::string::npos ? text : text.substr(0, first);
}

}  // namespace difftrain::model
