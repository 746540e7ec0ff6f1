// The manifest of a sample folder: one JSON object per generated image, so an
// evaluation knows each image's prompt, seed and sampler settings without
// parsing file names. JSON Lines, one line per image:
//   {"file":"00000.png","prompt":"a red circle","seed":7,"sampler":"euler","steps":50,"guidance":3.0}
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::eval {

struct ManifestEntry {
  std::string file;  // relative to the manifest's directory
  std::string prompt;
  uint64_t seed = 0;
  std::string sampler;
  int64_t steps = 0;
  double guidance = 0;
};

// Written to a temp file, fsynced, then renamed, so a reader never sees half a manifest.
void write_manifest(const std::string& path, const std::vector<ManifestEntry>& entries);

// Blank lines are skipped; a malformed line, a missing key or a key of the
// wrong type throws std::runtime_error naming the file and line number, as
// does a path that does not exist or is a directory. Unknown keys are ignored.
std::vector<ManifestEntry> read_manifest(const std::string& path);

// The distinct guidance scales of the entries, increasing, as "1, 3" (for error messages).
std::string guidance_values(const std::vector<ManifestEntry>& entries);

}  // namespace difftrain::eval
