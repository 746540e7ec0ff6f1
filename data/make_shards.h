// make-shards: a user's captioned images (an image folder with metadata.jsonl
// files, or a CSV/TSV list) converted to shards (docs/SHARD_FORMAT.md,
// "Making shards from your images"). No MPI and no LibTorch here: the caller
// passes (rank, world) and does the barrier between the steps.
//
//   list_inputs      every entry, in a fixed order (metadata files by path, then line)
//   prepare_output   rank 0: records the plan in out/make-shards.json, or checks it against the recorded one
//   convert_chunks   every rank: chunk k (shard_size entries) → out/shard-%05d.h5 when k % world == rank,
//                    skipping chunks a previous run finished; one record per chunk in out/.make-shards/
//   finish_make_shards  rank 0, after all ranks: out/rejected.jsonl from the records, and the summary
//
// The output depends only on the input list and the settings, never on the
// number of ranks. A file that cannot be used (missing, undecodable, too
// small, without a caption or label) is skipped and listed with its reason in
// rejected.jsonl; problems with the list itself (unparsable metadata line, no
// file_name, missing column) stop the run with MakeShardsError.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/image_decode.h"

namespace difftrain::data {

// A problem with the input list, the settings or the output folder; the
// message names the file (and line), key or setting and what was expected.
struct MakeShardsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct MakeShardsOptions {
  std::string input;    // a folder holding metadata.jsonl files (at any depth), or a .csv / .tsv file
  std::string out_dir;  // shards, make-shards.json, rejected.jsonl, .make-shards/ (chunk records)
  DecodeOptions decode;  // resolution (decode.size), channels, geometry, background, min size
  int64_t shard_size = 4096;            // entries per chunk (a shard holds the ones that decoded)
  std::string caption_column = "text";  // metadata key / CSV column of the caption
  std::string label_column;             // "" = no labels
  int64_t max_tokens = 32;              // caption length the model keeps (summary only; model/tokenizer.h)
};

// One listed image.
struct InputEntry {
  std::string path;     // where to open it: the list's folder joined with the listed name
  std::string name;     // how reports name it: relative to the input folder, or to the CSV's folder
  std::string caption;
  std::optional<int64_t> label;
  std::string problem;  // non-empty: rejected without decoding, e.g. "missing caption: no 'text' key"
};

struct InputList {
  std::vector<InputEntry> entries;       // in plan order
  bool labelled = false;                 // a label column was given
  std::vector<std::string> label_names;  // string labels: the distinct values sorted; label = index
  std::string fingerprint;               // 16 hex digits over names, captions, labels and problems
};

// Every entry of the input (options.input), in plan order. Throws MakeShardsError.
InputList list_inputs(const MakeShardsOptions& options);

// One record of a CSV (RFC 4180: fields may be quoted with ", "" is a quote,
// quoted fields may hold the delimiter and line breaks; CRLF or LF) or of a TSV
// (no quoting at all: a field ends at the next tab or line break). A leading
// UTF-8 byte-order mark is dropped; empty lines are skipped.
struct DelimitedRow {
  int64_t line = 0;  // 1-based line where the record starts
  std::vector<std::string> fields;
};
// `source` names the file in errors. Throws MakeShardsError for an unclosed
// quote or text after a closing quote, naming the line.
std::vector<DelimitedRow> parse_delimited(const std::string& text, char delimiter, bool quoting,
                                          const std::string& source);

// Chunks: entries [k * shard_size, min((k + 1) * shard_size, n)) form chunk k.
int64_t chunk_count(int64_t entries, int64_t shard_size);
std::vector<int64_t> chunks_of_rank(int64_t chunks, int rank, int world);  // k with k % world == rank
std::string shard_file_name(int64_t chunk);                                // "shard-00003.h5"

// The settings and input that decide the output, as recorded in
// out/make-shards.json (compact JSON, keys in a fixed order).
std::string plan_json(const MakeShardsOptions& options, const InputList& list);

// Rank 0, before any conversion: creates out_dir and writes make-shards.json,
// or, when it exists, checks that it records the same plan. Throws
// MakeShardsError naming the first differing setting (never deletes anything),
// or when out_dir holds *.h5 files but no make-shards.json.
void prepare_output(const MakeShardsOptions& options, const InputList& list);

struct ConvertStats {
  int64_t chunks_kept = 0;       // finished by an earlier run (record present, shard valid)
  int64_t chunks_converted = 0;  // converted now
  int64_t files_converted = 0;   // entries of the chunks converted now
};
// done / total: entries of this rank's chunks converted so far / to convert in this run.
using ProgressCallback = std::function<void(int64_t done, int64_t total)>;

// Converts this rank's unfinished chunks. Per file, nothing throws: every
// problem becomes a rejection. Throws ShardError / MakeShardsError only when a
// shard or record cannot be written.
ConvertStats convert_chunks(const MakeShardsOptions& options, const InputList& list, int rank, int world,
                            const ProgressCallback& progress = {});

struct MakeShardsSummary {
  int64_t inputs = 0, written = 0, rejected = 0, shards = 0;
  std::map<std::string, int64_t> rejected_by_reason;  // "cannot decode", "too small", ... → count
  // Lengths in UTF-8 bytes of the written captions (the tokenizer is byte-level).
  int64_t caption_p50 = 0, caption_p90 = 0, caption_p99 = 0, caption_max = 0;
  int64_t captions_longer = 0;  // longer than max_tokens: would be cut
  int64_t max_tokens = 0;
  std::string out_dir, rejected_file;
};

// Rank 0, after every rank finished convert_chunks: reads every chunk record,
// writes out/rejected.jsonl ({"file": name, "reason": why} per line, plan
// order) and returns the totals. Throws MakeShardsError if a record is missing.
MakeShardsSummary finish_make_shards(const MakeShardsOptions& options, const InputList& list);

// The summary printed at the end: inputs, written, rejected by reason, shards,
// caption lengths against max_tokens. Several lines, ends with a newline.
std::string format_summary(const MakeShardsSummary& summary);

}  // namespace difftrain::data
