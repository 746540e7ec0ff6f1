#include "data/make_shards.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "data/captions.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kMetadataFile = "metadata.jsonl";  // Hugging Face `imagefolder` convention
constexpr const char* kPlanFile = "make-shards.json";
constexpr const char* kRejectedFile = "rejected.jsonl";
constexpr const char* kRecordDir = ".make-shards";         // chunk-%05d.json, one per finished chunk
constexpr const char* kSourceAttribute = "source";          // "make-shards" in every shard
constexpr const char* kPlanAttribute = "make_shards_plan";  // plan_json() in every shard
constexpr int64_t kPlanVersion = 1;

// ---- files ------------------------------------------------------------------

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MakeShardsError("cannot open " + path.string() + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw MakeShardsError("cannot read " + path.string());
  return text.str();
}

void fsync_or_throw(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) throw MakeShardsError("cannot open " + path + " for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw MakeShardsError("fsync of " + path + " failed: " + std::strerror(err));
}

// "<path>.tmp", fsync, rename, fsync of the folder: a reader sees the old file or the whole new one.
void write_file_atomically(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) throw MakeShardsError("cannot write " + tmp + ": " + std::strerror(errno));
  }
  fsync_or_throw(tmp, O_RDONLY);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw MakeShardsError("cannot rename " + tmp + " to " + path.string() + ": " + ec.message());
  fsync_or_throw(path.parent_path().empty() ? "." : path.parent_path().string(), O_RDONLY | O_DIRECTORY);
}

// ---- captions and labels ----------------------------------------------------

// Why a caption cannot be used, or "".
std::string caption_problem(const std::string& caption) {
  if (caption.find_first_not_of(" \t\r\n") == std::string::npos) return "empty caption";
  const std::string defect = caption_defect(caption);
  if (!defect.empty()) return "caption " + defect;
  return "";
}

// A label as listed, before the list decides between integer and string labels.
struct RawLabel {
  enum Kind { kNone, kInteger, kString } kind = kNone;
  int64_t integer = 0;
  std::string text;
  std::string where;  // "file:line", for errors
};

std::optional<int64_t> parse_int64(const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

// Integer labels stay as they are; string labels become their index among the
// sorted distinct values (label_names). CSV/TSV cells are all text: a column
// whose every value is an integer gives integer labels.
void resolve_labels(InputList& list, const std::vector<RawLabel>& raw, bool text_cells, const std::string& column) {
  list.labelled = true;
  const RawLabel* first_int = nullptr;
  const RawLabel* first_string = nullptr;
  bool all_integers = true;
  for (const RawLabel& r : raw) {
    if (r.kind == RawLabel::kInteger && !first_int) first_int = &r;
    if (r.kind == RawLabel::kString) {
      if (!first_string) first_string = &r;
      if (!parse_int64(r.text)) all_integers = false;
    }
  }
  if (first_int && first_string) {
    throw MakeShardsError("label column '" + column + "' mixes integers (first at " + first_int->where +
                          ") and strings (first at " + first_string->where + ", \"" + first_string->text +
                          "\"); expected one kind");
  }
  const bool strings = first_string && !(text_cells && all_integers);
  std::map<std::string, int64_t> index;
  if (strings) {
    for (const RawLabel& r : raw) {
      if (r.kind == RawLabel::kString) index.emplace(r.text, 0);
    }
    int64_t next = 0;
    for (auto& [name, i] : index) {
      i = next++;
      list.label_names.push_back(name);
    }
  }
  for (size_t i = 0; i < raw.size(); ++i) {
    const RawLabel& r = raw[i];
    if (r.kind == RawLabel::kInteger) list.entries[i].label = r.integer;
    else if (r.kind == RawLabel::kString) list.entries[i].label = strings ? index.at(r.text) : *parse_int64(r.text);
  }
}

// ---- listing ----------------------------------------------------------------

std::string describe_json_type(const json& value) {
  if (value.is_number()) return "a number";
  if (value.is_boolean()) return "a boolean";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return value.type_name();
}

// Name for reports: `file` relative to the input root, '/'-separated.
std::string report_name(const fs::path& folder_from_root, const std::string& file) {
  const fs::path f(file);
  if (f.is_absolute()) return f.lexically_normal().generic_string();
  if (folder_from_root.empty() || folder_from_root == ".") return f.lexically_normal().generic_string();
  return (folder_from_root / f).lexically_normal().generic_string();
}

struct Listing {
  InputList list;
  std::vector<RawLabel> labels;  // (entries)
  bool caption_key_seen = false, label_key_seen = false;
};

void list_metadata_file(const fs::path& metadata, const fs::path& root, const MakeShardsOptions& o, Listing& out) {
  const std::string text = read_text_file(metadata);
  const fs::path folder = metadata.parent_path();
  const fs::path folder_from_root = folder.lexically_relative(root);
  std::istringstream lines(text);
  std::string line;
  int64_t line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = metadata.string() + ":" + std::to_string(line_number);
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& e) {
      throw MakeShardsError(where + ": not valid JSON (" + e.what() + "); expected one JSON object per line");
    }
    if (!row.is_object()) throw MakeShardsError(where + ": expected a JSON object, found " + describe_json_type(row));
    const auto file = row.find("file_name");
    if (file == row.end() || !file->is_string() || file->get<std::string>().empty()) {
      throw MakeShardsError(where + ": expected a non-empty string 'file_name' (the image's path relative to " +
                            folder.string() + ")");
    }
    InputEntry entry;
    entry.path = (folder / file->get<std::string>()).string();
    entry.name = report_name(folder_from_root, file->get<std::string>());
    const auto caption = row.find(o.caption_column);
    if (caption == row.end()) {
      entry.problem = "missing caption: no '" + o.caption_column + "' key";
    } else if (caption->is_null()) {
      out.caption_key_seen = true;
      entry.problem = "missing caption: '" + o.caption_column + "' is null";
    } else if (!caption->is_string()) {
      out.caption_key_seen = true;
      entry.problem = "caption is not a string: '" + o.caption_column + "' is " + describe_json_type(*caption);
    } else {
      out.caption_key_seen = true;
      entry.caption = caption->get<std::string>();
      entry.problem = caption_problem(entry.caption);
    }
    RawLabel label;
    label.where = where;
    if (!o.label_column.empty()) {
      const auto value = row.find(o.label_column);
      if (value != row.end()) out.label_key_seen = true;
      if (value == row.end() || value->is_null() || (value->is_string() && value->get<std::string>().empty())) {
        if (entry.problem.empty()) entry.problem = "missing label: no value in '" + o.label_column + "'";
      } else if (value->is_number_integer() && !(value->is_number_unsigned() && value->get<uint64_t>() > INT64_MAX)) {
        label.kind = RawLabel::kInteger;
        label.integer = value->get<int64_t>();
      } else if (value->is_string()) {
        label.kind = RawLabel::kString;
        label.text = value->get<std::string>();
      } else {
        throw MakeShardsError(where + ": label column '" + o.label_column + "' holds " + value->dump() +
                              "; expected an integer or a string");
      }
    }
    out.list.entries.push_back(std::move(entry));
    out.labels.push_back(std::move(label));
  }
}

void list_image_folder(const fs::path& root, const MakeShardsOptions& o, Listing& out) {
  std::vector<fs::path> metadata_files;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) throw MakeShardsError("--input " + root.string() + ": cannot list the folder: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw MakeShardsError("--input " + root.string() + ": cannot list the folder: " + ec.message());
    if (it->path().filename() == kMetadataFile && it->is_regular_file()) metadata_files.push_back(it->path());
  }
  if (ec) throw MakeShardsError("--input " + root.string() + ": cannot list the folder: " + ec.message());
  if (metadata_files.empty()) {
    throw MakeShardsError("--input " + root.string() + ": no " + kMetadataFile +
                          " under this folder; expected the Hugging Face imagefolder layout (metadata.jsonl with one "
                          "{\"file_name\": ..., \"" + o.caption_column + "\": ...} per line), or a .csv/.tsv file");
  }
  // Sorted by path relative to the root, so the order does not depend on where the folder lives.
  std::sort(metadata_files.begin(), metadata_files.end(), [&](const fs::path& a, const fs::path& b) {
    return a.lexically_relative(root).generic_string() < b.lexically_relative(root).generic_string();
  });
  for (const fs::path& m : metadata_files) list_metadata_file(m, root, o, out);
  if (!out.list.entries.empty() && !out.caption_key_seen) {
    throw MakeShardsError("--caption-column " + o.caption_column + ": no line of any " + kMetadataFile + " under " +
                          root.string() + " has the key '" + o.caption_column + "'");
  }
  if (!o.label_column.empty() && !out.list.entries.empty() && !out.label_key_seen) {
    throw MakeShardsError("--label-column " + o.label_column + ": no line of any " + kMetadataFile + " under " +
                          root.string() + " has the key '" + o.label_column + "'");
  }
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

void list_delimited_file(const fs::path& file, bool tsv, const MakeShardsOptions& o, Listing& out) {
  const std::vector<DelimitedRow> rows = parse_delimited(read_text_file(file), tsv ? '\t' : ',', !tsv, file.string());
  if (rows.empty()) throw MakeShardsError(file.string() + ": empty; expected a header line naming the columns");
  std::vector<std::string> header = rows[0].fields;
  for (auto& h : header) {
    const size_t b = h.find_first_not_of(" \t"), e = h.find_last_not_of(" \t");
    h = b == std::string::npos ? "" : h.substr(b, e - b + 1);
  }
  const auto column = [&](const std::string& name) -> std::optional<size_t> {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it == header.end()) return std::nullopt;
    return static_cast<size_t>(it - header.begin());
  };
  auto path_col = column("path");
  if (!path_col) path_col = column("file_name");
  if (!path_col) {
    throw MakeShardsError(file.string() + ": the header has no 'path' or 'file_name' column (columns: " +
                          join_names(header) + ")");
  }
  const auto caption_col = column(o.caption_column);
  if (!caption_col) {
    throw MakeShardsError("--caption-column " + o.caption_column + ": " + file.string() +
                          " has no such column (columns: " + join_names(header) + ")");
  }
  std::optional<size_t> label_col;
  if (!o.label_column.empty()) {
    label_col = column(o.label_column);
    if (!label_col) {
      throw MakeShardsError("--label-column " + o.label_column + ": " + file.string() +
                            " has no such column (columns: " + join_names(header) + ")");
    }
  }
  const fs::path folder = file.parent_path();
  for (size_t r = 1; r < rows.size(); ++r) {
    const DelimitedRow& row = rows[r];
    const std::string where = file.string() + ":" + std::to_string(row.line);
    if (row.fields.size() != header.size()) {
      throw MakeShardsError(where + ": " + std::to_string(row.fields.size()) + " fields, the header has " +
                            std::to_string(header.size()) + (tsv ? "" : " (quote fields that contain commas)"));
    }
    const std::string& name = row.fields[*path_col];
    if (name.empty()) throw MakeShardsError(where + ": empty '" + header[*path_col] + "'");
    InputEntry entry;
    entry.path = (folder / name).string();
    entry.name = report_name(fs::path(), name);
    entry.caption = row.fields[*caption_col];
    entry.problem = caption_problem(entry.caption);
    RawLabel label;
    label.where = where;
    if (label_col) {
      const std::string& value = row.fields[*label_col];
      if (value.empty()) {
        if (entry.problem.empty()) entry.problem = "missing label: no value in '" + o.label_column + "'";
      } else {
        label.kind = RawLabel::kString;
        label.text = value;
      }
    }
    out.list.entries.push_back(std::move(entry));
    out.labels.push_back(std::move(label));
  }
}

// FNV-1a, 64 bits: a fingerprint, not a security measure.
struct Fnv1a {
  uint64_t h = 1469598103934665603ull;
  void add(const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xFFu) * 1099511628211ull;  // a separator no UTF-8 text contains
  }
};

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string fingerprint_of(const InputList& list) {
  Fnv1a f;
  for (const InputEntry& e : list.entries) {
    f.add(e.name);
    f.add(e.caption);
    f.add(e.label ? std::to_string(*e.label) : "-");
    f.add(e.problem);
  }
  for (const std::string& n : list.label_names) f.add(n);
  return hex16(f.h);
}

// ---- plan, records ----------------------------------------------------------

json plan_object(const MakeShardsOptions& o, const InputList& list) {
  const auto& d = o.decode;
  return json{{"version", kPlanVersion},
              {"input_entries", static_cast<int64_t>(list.entries.size())},
              {"input_fingerprint", list.fingerprint},
              {"resolution", d.size},
              {"channels", d.channels},
              {"geometry", to_string(d.geometry)},
              {"background", {d.background[0], d.background[1], d.background[2]}},
              {"min_size", d.min_size},
              {"shard_size", o.shard_size},
              {"caption_column", o.caption_column},
              {"label_column", o.label_column}};
}

fs::path record_path(const MakeShardsOptions& o, int64_t chunk) {
  char name[32];
  std::snprintf(name, sizeof name, "chunk-%05lld.json", static_cast<long long>(chunk));
  return fs::path(o.out_dir) / kRecordDir / name;
}

struct ChunkBounds {
  int64_t begin, end;
};
ChunkBounds bounds_of(int64_t chunk, int64_t entries, int64_t shard_size) {
  return {chunk * shard_size, std::min(entries, (chunk + 1) * shard_size)};
}

// The chunk's record if it exists, parses and belongs to this plan.
std::optional<json> read_record(const MakeShardsOptions& o, int64_t chunk, const std::string& plan) {
  const fs::path path = record_path(o, chunk);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  try {
    json record = json::parse(read_text_file(path));
    if (!record.is_object() || record.value("plan", "") != plan || !record.contains("written") ||
        !record.contains("rejected") || !record["rejected"].is_array()) {
      return std::nullopt;
    }
    return record;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Finished: a record of this plan, and (when it wrote anything) a shard that
// validates and holds as many samples as the record says.
bool chunk_finished(const MakeShardsOptions& o, int64_t chunk, const std::string& plan, const ImageGeometry& geometry,
                    int64_t entries) {
  const auto record = read_record(o, chunk, plan);
  if (!record) return false;
  const ChunkBounds b = bounds_of(chunk, entries, o.shard_size);
  if (record->value("entries", int64_t{-1}) != b.end - b.begin) return false;
  const int64_t written = record->value("written", int64_t{-1});
  if (written == 0) return true;
  try {
    return validate_shard((fs::path(o.out_dir) / shard_file_name(chunk)).string(), geometry).count == written;
  } catch (const ShardError&) {
    return false;
  }
}

// Why one entry cannot be written, or "" with `pixels` filled. Never throws.
std::string convert_entry(const InputEntry& entry, const DecodeOptions& decode, std::vector<uint8_t>* pixels) {
  if (!entry.problem.empty()) return entry.problem;
  try {
    std::error_code ec;
    if (!fs::is_regular_file(entry.path, ec)) {
      return fs::exists(entry.path, ec) ? "cannot decode: not a regular file" : "missing file: " + entry.path;
    }
    DecodedImage image = decode_image(entry.path, decode);
    if (!image.ok()) return image.error;
    *pixels = std::move(image.pixels);
    return "";
  } catch (const std::exception& e) {
    return std::string("cannot decode: ") + e.what();
  }
}

void convert_chunk(const MakeShardsOptions& o, const InputList& list, int64_t chunk, const std::string& plan,
                   const ImageGeometry& geometry, const std::function<void()>& file_done) {
  const ChunkBounds b = bounds_of(chunk, static_cast<int64_t>(list.entries.size()), o.shard_size);
  const std::string shard_path = (fs::path(o.out_dir) / shard_file_name(chunk)).string();
  ShardWriter writer(shard_path, geometry);
  json rejected = json::array();
  std::vector<uint8_t> pixels;  // (N, N, C)
  for (int64_t i = b.begin; i < b.end; ++i) {
    const InputEntry& entry = list.entries[static_cast<size_t>(i)];
    std::string reason = convert_entry(entry, o.decode, &pixels);
    if (reason.empty()) {
      try {
        writer.add(pixels.data(), entry.caption, list.labelled ? entry.label : std::nullopt);
      } catch (const ShardError& e) {
        reason = std::string("cannot store: ") + e.what();
      }
    }
    if (!reason.empty()) rejected.push_back({{"index", i}, {"file", entry.name}, {"reason", reason}});
    if (file_done) file_done();
  }
  const int64_t written = writer.count();
  if (written > 0) {
    writer.set_attribute(kSourceAttribute, "make-shards");
    writer.set_attribute(kPlanAttribute, plan);
    if (!list.label_names.empty()) writer.set_attribute(kLabelNamesAttribute, json(list.label_names).dump());
    writer.close();
  }
  // The record comes after the shard: a record always vouches for a complete shard.
  const json record{{"chunk", chunk},
                    {"plan", plan},
                    {"entries", b.end - b.begin},
                    {"written", written},
                    {"shard", written > 0 ? json(shard_file_name(chunk)) : json(nullptr)},
                    {"rejected", rejected}};
  write_file_atomically(record_path(o, chunk), record.dump() + "\n");
}

// Settings of the plan in the order they are compared, with the option that sets each.
const std::vector<std::pair<std::string, std::string>>& plan_settings() {
  static const std::vector<std::pair<std::string, std::string>> settings{
      {"version", "make-shards.json version"}, {"resolution", "--resolution"},   {"channels", "--channels"},
      {"geometry", "--geometry"},               {"background", "--background"},   {"min_size", "--min-size"},
      {"shard_size", "--shard-size"},           {"caption_column", "--caption-column"},
      {"label_column", "--label-column"}};
  return settings;
}

std::string show(const json& value) {
  if (value.is_null() || (value.is_string() && value.get<std::string>().empty())) return "(none)";
  return value.is_string() ? value.get<std::string>() : value.dump();
}

}  // namespace

// ---- public -----------------------------------------------------------------

std::vector<DelimitedRow> parse_delimited(const std::string& text, char delimiter, bool quoting,
                                          const std::string& source) {
  std::vector<DelimitedRow> rows;
  size_t i = 0;
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) i = 3;
  int64_t line = 1;
  DelimitedRow row;
  row.line = 1;
  std::string field;
  bool field_quoted = false;  // the current field was quoted (so an empty line is not an empty record)
  const auto end_field = [&] {
    row.fields.push_back(std::move(field));
    field.clear();
  };
  const auto end_row = [&] {
    end_field();
    const bool blank = row.fields.size() == 1 && row.fields[0].empty() && !field_quoted;
    if (!blank) rows.push_back(std::move(row));
    row = DelimitedRow{};
    row.line = line;
    field_quoted = false;
  };
  while (i < text.size()) {
    const char c = text[i];
    if (quoting && c == '"' && field.empty() && !field_quoted) {
      // A quoted field: up to the next lone quote; "" is a quote; line breaks belong to the field.
      const int64_t start_line = line;
      field_quoted = true;
      ++i;
      while (true) {
        if (i >= text.size()) {
          throw MakeShardsError(source + ":" + std::to_string(start_line) + ": a quoted field starting here is not "
                                "closed (a quote inside a quoted field is written \"\")");
        }
        if (text[i] == '"') {
          if (i + 1 < text.size() && text[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        if (text[i] == '\n') ++line;
        field += text[i++];
      }
      const bool at_end = i >= text.size() || text[i] == delimiter || text[i] == '\n' ||
                          (text[i] == '\r' && (i + 1 >= text.size() || text[i + 1] == '\n'));
      if (!at_end) {
        throw MakeShardsError(source + ":" + std::to_string(line) + ": text after the closing quote of a field "
                              "(quote the whole field and write a quote inside it as \"\")");
      }
      continue;
    }
    if (c == delimiter) {
      end_field();
      field_quoted = false;
      ++i;
    } else if (c == '\n' || (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ||
               (c == '\r' && i + 1 == text.size())) {
      i += (c == '\r' && i + 1 < text.size()) ? 2 : 1;
      ++line;
      end_row();
    } else {
      field += c;
      ++i;
    }
  }
  if (!field.empty() || !row.fields.empty() || field_quoted) end_row();
  return rows;
}

InputList list_inputs(const MakeShardsOptions& o) {
  const fs::path input(o.input);
  std::error_code ec;
  Listing listing;
  if (fs::is_directory(input, ec)) {
    list_image_folder(input, o, listing);
  } else {
    std::string ext = input.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!fs::exists(input, ec)) {
      throw MakeShardsError("--input " + o.input + ": does not exist; expected an image folder with " + kMetadataFile +
                            " or a .csv/.tsv file");
    }
    if (ext != ".csv" && ext != ".tsv") {
      throw MakeShardsError("--input " + o.input + ": expected an image folder with " + kMetadataFile +
                            " or a file ending in .csv or .tsv");
    }
    list_delimited_file(input, ext == ".tsv", o, listing);
  }
  if (listing.list.entries.empty()) throw MakeShardsError("--input " + o.input + ": lists no image");
  if (!o.label_column.empty()) resolve_labels(listing.list, listing.labels, !fs::is_directory(input, ec), o.label_column);
  listing.list.fingerprint = fingerprint_of(listing.list);
  return std::move(listing.list);
}

int64_t chunk_count(int64_t entries, int64_t shard_size) {
  if (shard_size < 1) throw std::invalid_argument("chunk_count: shard_size must be >= 1");
  return (entries + shard_size - 1) / shard_size;
}

std::vector<int64_t> chunks_of_rank(int64_t chunks, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("chunks_of_rank: need 0 <= rank < world");
  std::vector<int64_t> mine;
  for (int64_t k = rank; k < chunks; k += world) mine.push_back(k);
  return mine;
}

std::string shard_file_name(int64_t chunk) {
  char name[32];
  std::snprintf(name, sizeof name, "shard-%05lld%s", static_cast<long long>(chunk), kShardExtension);
  return name;
}

std::string plan_json(const MakeShardsOptions& options, const InputList& list) {
  return plan_object(options, list).dump();
}

void prepare_output(const MakeShardsOptions& o, const InputList& list) {
  const fs::path out(o.out_dir);
  const fs::path plan_path = out / kPlanFile;
  std::error_code ec;
  fs::create_directories(out / kRecordDir, ec);
  if (ec) throw MakeShardsError("--out " + o.out_dir + ": cannot create the folder: " + ec.message());
  const json now = plan_object(o, list);
  if (fs::exists(plan_path, ec)) {
    json there;
    try {
      there = json::parse(read_text_file(plan_path));
    } catch (const json::exception& e) {
      throw MakeShardsError(plan_path.string() + ": not valid JSON (" + e.what() +
                            "); it records how the shards in this folder were made: restore it or use another --out");
    }
    const std::string advice = "; run with the same settings to resume, or choose another --out folder";
    for (const auto& [key, option] : plan_settings()) {
      const json a = there.value(key, json()), b = now.at(key);
      if (a != b) {
        throw MakeShardsError("--out " + o.out_dir + " holds shards made with another plan (" + plan_path.string() +
                              "): " + option + " is " + show(a) + " there, " + show(b) + " now" + advice);
      }
    }
    if (there.value("input_fingerprint", json()) != now.at("input_fingerprint") ||
        there.value("input_entries", json()) != now.at("input_entries")) {
      throw MakeShardsError("--out " + o.out_dir + " holds shards made from another input list (" +
                            plan_path.string() + "): " + show(there.value("input_entries", json())) +
                            " entries with fingerprint " + show(there.value("input_fingerprint", json())) +
                            " there, " + show(now.at("input_entries")) + " entries with fingerprint " +
                            show(now.at("input_fingerprint")) + " now (files, captions or labels changed)" + advice);
    }
    return;
  }
  for (const fs::directory_entry& e : fs::directory_iterator(out, ec)) {
    if (e.path().extension() == kShardExtension) {
      throw MakeShardsError("--out " + o.out_dir + " holds " + e.path().filename().string() + " but no " + kPlanFile +
                            ": shards not made by make-shards would join the dataset; choose an empty folder");
    }
  }
  json recorded = now;
  recorded["input"] = fs::absolute(o.input, ec).lexically_normal().string();
  write_file_atomically(plan_path, recorded.dump(2) + "\n");
}

ConvertStats convert_chunks(const MakeShardsOptions& o, const InputList& list, int rank, int world,
                            const ProgressCallback& progress) {
  const std::string plan = plan_json(o, list);
  const auto entries = static_cast<int64_t>(list.entries.size());
  const ImageGeometry geometry{o.decode.size, o.decode.size, o.decode.channels};
  ConvertStats stats;
  std::vector<int64_t> todo;
  int64_t total = 0;
  for (int64_t k : chunks_of_rank(chunk_count(entries, o.shard_size), rank, world)) {
    if (chunk_finished(o, k, plan, geometry, entries)) {
      ++stats.chunks_kept;
    } else {
      todo.push_back(k);
      const ChunkBounds b = bounds_of(k, entries, o.shard_size);
      total += b.end - b.begin;
    }
  }
  int64_t done = 0;
  if (progress) progress(0, total);
  for (int64_t k : todo) {
    convert_chunk(o, list, k, plan, geometry, [&] {
      ++done;
      if (progress) progress(done, total);
    });
    ++stats.chunks_converted;
  }
  stats.files_converted = total;
  return stats;
}

MakeShardsSummary finish_make_shards(const MakeShardsOptions& o, const InputList& list) {
  const std::string plan = plan_json(o, list);
  const auto entries = static_cast<int64_t>(list.entries.size());
  MakeShardsSummary s;
  s.inputs = entries;
  s.max_tokens = o.max_tokens;
  s.out_dir = o.out_dir;
  s.rejected_file = (fs::path(o.out_dir) / kRejectedFile).string();
  std::vector<bool> written(static_cast<size_t>(entries), true);
  std::string rejected_lines;
  for (int64_t k = 0; k < chunk_count(entries, o.shard_size); ++k) {
    const auto record = read_record(o, k, plan);
    if (!record) {
      throw MakeShardsError("chunk " + std::to_string(k) + " has no record of this plan at " +
                            record_path(o, k).string() + ": it was not converted; run make-shards again");
    }
    const int64_t w = record->value("written", int64_t{0});
    s.written += w;
    if (w > 0) ++s.shards;
    for (const json& r : (*record)["rejected"]) {
      const int64_t index = r.value("index", int64_t{-1});
      if (index >= 0 && index < entries) written[static_cast<size_t>(index)] = false;
      const std::string reason = r.value("reason", "");
      ++s.rejected;
      ++s.rejected_by_reason[reason.substr(0, reason.find(':'))];
      rejected_lines += json{{"file", r.value("file", "")}, {"reason", reason}}.dump() + "\n";
    }
  }
  write_file_atomically(s.rejected_file, rejected_lines);
  std::vector<std::string> captions;
  captions.reserve(static_cast<size_t>(s.written));
  for (int64_t i = 0; i < entries; ++i) {
    if (written[static_cast<size_t>(i)]) captions.push_back(list.entries[static_cast<size_t>(i)].caption);
  }
  const CaptionLengths lengths = caption_lengths(captions, o.max_tokens);
  s.caption_p50 = lengths.p50, s.caption_p90 = lengths.p90, s.caption_p99 = lengths.p99, s.caption_max = lengths.max;
  s.captions_longer = lengths.longer;
  return s;
}

std::string format_summary(const MakeShardsSummary& s) {
  std::ostringstream out;
  out << "make-shards: " << s.inputs << " inputs, " << s.written << " written in " << s.shards << " shard"
      << (s.shards == 1 ? "" : "s") << " (" << s.out_dir << "), " << s.rejected << " rejected";
  if (s.rejected > 0) {
    out << " (";
    bool first = true;
    for (const auto& [reason, count] : s.rejected_by_reason) {
      out << (first ? "" : ", ") << reason << " " << count;
      first = false;
    }
    out << "; each listed in " << s.rejected_file << ")";
  }
  out << "\n";
  if (s.written > 0) {
    out << "captions (UTF-8 bytes): p50 " << s.caption_p50 << ", p90 " << s.caption_p90 << ", p99 " << s.caption_p99
        << ", max " << s.caption_max << "; " << s.captions_longer << " of " << s.written << " longer than --max-tokens "
        << s.max_tokens << " (would be cut)\n";
  }
  return out.str();
}

}  // namespace difftrain::data
