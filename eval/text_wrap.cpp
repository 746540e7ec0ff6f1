#include "eval/text_wrap.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace difftrain::eval {

std::vector<std::string> wrap_text(const std::string& text, size_t max_chars, size_t max_lines) {
  if (max_chars == 0 || max_lines == 0) throw std::invalid_argument("wrap_text needs a non-empty box");
  std::vector<std::string> lines(1);
  std::istringstream words(text);
  for (std::string word; words >> word;) {
    std::string& line = lines.back();
    if (!line.empty() && line.size() + 1 + word.size() <= max_chars) {
      line += " " + word;
      continue;
    }
    if (!line.empty()) lines.emplace_back();
    for (; word.size() > max_chars; word.erase(0, max_chars)) {
      lines.back() = word.substr(0, max_chars);
      lines.emplace_back();
    }
    lines.back() = word;
  }

  if (lines.size() <= max_lines) return lines;
  lines.resize(max_lines);
  std::string& last = lines.back();
  const std::string ellipsis = "...";
  if (max_chars <= ellipsis.size()) {
    last = ellipsis.substr(0, max_chars);
  } else {
    last = last.substr(0, std::min(last.size(), max_chars - ellipsis.size())) + ellipsis;
  }
  return lines;
}

}  // namespace difftrain::eval
