// wrap_text: fits a label into a fixed-width text box of a bitmap font, where
// width is counted in characters.
#pragma once

#include <string>
#include <vector>

namespace difftrain::eval {

// Greedy word wrap to at most `max_chars` per line; a word longer than a line
// is split. If more than `max_lines` lines would be needed, the last kept line
// ends in "..." so a truncated label is visibly truncated. Whitespace runs
// collapse to one space. Returns at least one (possibly empty) line.
std::vector<std::string> wrap_text(const std::string& text, size_t max_chars, size_t max_lines);

}  // namespace difftrain::eval
