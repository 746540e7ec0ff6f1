// The built-in synthetic dataset's vocabulary: colour names with their RGB
// values, and shape names. Shared by the generator (data/synthetic_shapes)
// and the colour-match evaluation (eval/colour_match), so both agree on what
// "a red circle" looks like.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

struct NamedColour {
  const char* name;
  std::array<uint8_t, 3> rgb;
};

// Chosen to be far apart in RGB so nearest-colour classification is robust.
inline const std::vector<NamedColour>& palette() {
  static const std::vector<NamedColour> colours = {
      {"red", {220, 30, 30}},     {"green", {30, 170, 50}},
      {"blue", {30, 60, 220}},    {"yellow", {235, 215, 30}},
      {"purple", {140, 40, 180}}, {"orange", {245, 130, 20}},
      {"cyan", {30, 200, 210}},   {"white", {245, 245, 245}},
  };
  return colours;
}

inline const std::vector<std::string>& shape_names() {
  static const std::vector<std::string> shapes = {"circle", "square", "triangle"};
  return shapes;
}

// Background of every synthetic image: a dark grey that no palette colour is near.
inline constexpr std::array<uint8_t, 3> kBackgroundRgb = {40, 40, 40};

inline std::string caption_for(const std::string& colour, const std::string& shape) {
  return "a " + colour + " " + shape;
}

}  // namespace difftrain::data
