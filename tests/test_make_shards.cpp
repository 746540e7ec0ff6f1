// Unit tests of the pure parts of make-shards (data/make_shards.h): CSV/TSV
// parsing, listing metadata.jsonl folders and CSV files, labels, chunking,
// and the plan check. Decoding and whole runs: tests/make_shards_tests.py.
#include <gtest/gtest.h>

#include <fstream>

#include "data/make_shards.h"
#include "tests/test_dirs.h"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::vector<std::string>> fields_of(const std::vector<DelimitedRow>& rows) {
  std::vector<std::vector<std::string>> out;
  for (const auto& r : rows) out.push_back(r.fields);
  return out;
}

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const MakeShardsError& e) {
    return e.what();
  }
  return "";
}

TEST(Csv, QuotedFieldsHoldDelimitersQuotesAndLineBreaks) {
  const std::string text =
      "\xEF\xBB\xBFpath,text\r\n"
      "a.jpg,plain\r\n"
      "\"b,c.jpg\",\"a \"\"quoted\"\" word, with comma\"\r\n"
      "\n"
      "d.jpg,\"two\nlines\"\n"
      "e.jpg,\"\"\n"
      "f.jpg,say \"hi\"";
  const auto rows = parse_delimited(text, ',', true, "list.csv");
  const std::vector<std::vector<std::string>> expected{{"path", "text"},
                                                       {"a.jpg", "plain"},
                                                       {"b,c.jpg", "a \"quoted\" word, with comma"},
                                                       {"d.jpg", "two\nlines"},
                                                       {"e.jpg", ""},
                                                       {"f.jpg", "say \"hi\""}};
  EXPECT_EQ(fields_of(rows), expected);
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_EQ(rows[1].line, 2);
  EXPECT_EQ(rows[3].line, 5);  // after the empty line 4
  EXPECT_EQ(rows[4].line, 7);  // the quoted line break counts
}

TEST(Csv, MalformedQuotingNamesTheLine) {
  EXPECT_NE(error_of([] { parse_delimited("path,text\na.jpg,\"open\n", ',', true, "x.csv"); }).find("x.csv:2"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_delimited("path,text\na.jpg,\"ab\"c\n", ',', true, "x.csv"); }).find("x.csv:2"),
            std::string::npos);
}

TEST(Tsv, NoQuoting) {
  const auto rows = parse_delimited("path\ttext\na.jpg\t\"quoted\" start, comma\n", '\t', false, "l.tsv");
  const std::vector<std::vector<std::string>> expected{{"path", "text"}, {"a.jpg", "\"quoted\" start, comma"}};
  EXPECT_EQ(fields_of(rows), expected);
}

TEST(Chunks, FixedSizeAndRoundRobinOverRanks) {
  EXPECT_EQ(chunk_count(0, 4), 0);
  EXPECT_EQ(chunk_count(8, 4), 2);
  EXPECT_EQ(chunk_count(9, 4), 3);
  EXPECT_EQ(chunks_of_rank(5, 0, 2), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(chunks_of_rank(5, 1, 2), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(chunks_of_rank(2, 2, 3), (std::vector<int64_t>{}));
  EXPECT_EQ(shard_file_name(3), "shard-00003.h5");
}

TEST(List, NestedMetadataFilesInPathOrderThenLineOrder) {
  const fs::path dir = fresh_test_dir();
  write(dir / "b" / "metadata.jsonl", "{\"file_name\": \"x.png\", \"text\": \"b1\"}\n");
  write(dir / "metadata.jsonl",
        "{\"file_name\": \"top.jpg\", \"text\": \"t1\"}\n\n"
        "{\"file_name\": \"sub/y.jpg\", \"text\": \"t2\"}\n"
        "{\"file_name\": \"n.jpg\"}\n"
        "{\"file_name\": \"e.jpg\", \"text\": \" \"}\n"
        "{\"file_name\": \"k.jpg\", \"text\": 3}\n");
  write(dir / "a" / "deeper" / "metadata.jsonl", "{\"file_name\": \"z.webp\", \"text\": \"a1\"}\n");
  MakeShardsOptions o;
  o.input = dir.string();
  const InputList list = list_inputs(o);
  std::vector<std::string> names, problems;
  for (const auto& e : list.entries) names.push_back(e.name), problems.push_back(e.problem);
  EXPECT_EQ(names, (std::vector<std::string>{"a/deeper/z.webp", "b/x.png", "top.jpg", "sub/y.jpg", "n.jpg", "e.jpg",
                                             "k.jpg"}));
  EXPECT_EQ(list.entries[0].path, (dir / "a" / "deeper" / "z.webp").string());
  EXPECT_EQ(list.entries[2].caption, "t1");
  EXPECT_EQ(problems[4], "missing caption: no 'text' key");
  EXPECT_EQ(problems[5], "empty caption");
  EXPECT_EQ(problems[6], "caption is not a string: 'text' is a number");
  EXPECT_FALSE(list.labelled);
  EXPECT_EQ(list.fingerprint.size(), 16u);
  EXPECT_EQ(list_inputs(o).fingerprint, list.fingerprint);
}

TEST(List, StructuralProblemsStopTheRun) {
  const fs::path dir = fresh_test_dir();
  MakeShardsOptions o;
  o.input = dir.string();
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("no metadata.jsonl"), std::string::npos);
  write(dir / "metadata.jsonl", "{\"file_name\": \"a.jpg\", \"text\": \"ok\"}\n{\"text\": \"no file\"}\n");
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("metadata.jsonl:2"), std::string::npos);
  write(dir / "metadata.jsonl", "{\"file_name\": \"a.jpg\", \"text\": \"ok\"}\nnot json\n");
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("metadata.jsonl:2: not valid JSON"), std::string::npos);
  write(dir / "metadata.jsonl", "{\"file_name\": \"a.jpg\", \"caption\": \"ok\"}\n");
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("--caption-column text"), std::string::npos);
  o.caption_column = "caption";
  EXPECT_EQ(list_inputs(o).entries.at(0).caption, "ok");
}

TEST(List, CsvPathsRelativeToTheCsvFolderAndStringLabelsSorted) {
  const fs::path dir = fresh_test_dir();
  write(dir / "lists" / "train.csv",
        "file_name,caption,animal\n"
        "img/1.jpg,\"a cat, sitting\",cat\n"
        "img/2.jpg,a dog,dog\n"
        "img/3.jpg,a bird,\n"
        "img/4.jpg,another cat,cat\n");
  MakeShardsOptions o;
  o.input = (dir / "lists" / "train.csv").string();
  o.caption_column = "caption";
  o.label_column = "animal";
  const InputList list = list_inputs(o);
  ASSERT_EQ(list.entries.size(), 4u);
  EXPECT_EQ(list.entries[0].path, (dir / "lists" / "img/1.jpg").string());
  EXPECT_EQ(list.entries[0].name, "img/1.jpg");
  EXPECT_EQ(list.entries[0].caption, "a cat, sitting");
  EXPECT_TRUE(list.labelled);
  EXPECT_EQ(list.label_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(list.entries[0].label, 0);
  EXPECT_EQ(list.entries[1].label, 1);
  EXPECT_EQ(list.entries[2].problem, "missing label: no value in 'animal'");
  EXPECT_EQ(list.entries[3].label, 0);

  o.label_column = "nope";
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("--label-column nope"), std::string::npos);
}

TEST(List, IntegerLabelsStayIntegersAndMixedKindsAreRefused) {
  const fs::path dir = fresh_test_dir();
  write(dir / "l.tsv", "path\ttext\ty\na.png\tone\t7\nb.png\ttwo\t-2\n");
  MakeShardsOptions o;
  o.input = (dir / "l.tsv").string();
  o.label_column = "y";
  const InputList list = list_inputs(o);
  EXPECT_TRUE(list.label_names.empty());
  EXPECT_EQ(list.entries[0].label, 7);
  EXPECT_EQ(list.entries[1].label, -2);

  write(dir / "m" / "metadata.jsonl",
        "{\"file_name\": \"a.png\", \"text\": \"x\", \"y\": 1}\n{\"file_name\": \"b.png\", \"text\": \"x\", \"y\": \"b\"}\n");
  o.input = (dir / "m").string();
  EXPECT_NE(error_of([&] { list_inputs(o); }).find("mixes integers"), std::string::npos);
}

TEST(Plan, ADifferentPlanIsRefusedNamingTheSetting) {
  const fs::path dir = fresh_test_dir();
  write(dir / "in" / "metadata.jsonl", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n");
  MakeShardsOptions o;
  o.input = (dir / "in").string();
  o.out_dir = (dir / "out").string();
  o.decode.size = 32;
  const InputList list = list_inputs(o);
  prepare_output(o, list);
  EXPECT_TRUE(fs::exists(dir / "out" / "make-shards.json"));
  prepare_output(o, list);  // the same plan: fine

  MakeShardsOptions other = o;
  other.decode.size = 64;
  EXPECT_NE(error_of([&] { prepare_output(other, list); }).find("--resolution is 32 there, 64 now"), std::string::npos);
  other = o;
  other.decode.geometry = FitGeometry::kPad;
  EXPECT_NE(error_of([&] { prepare_output(other, list); }).find("--geometry is crop there, pad now"), std::string::npos);
  write(dir / "in" / "metadata.jsonl", "{\"file_name\": \"a.png\", \"text\": \"changed\"}\n");
  EXPECT_NE(error_of([&] { prepare_output(o, list_inputs(o)); }).find("another input list"), std::string::npos);

  // A folder with shards that make-shards did not record is refused.
  write(dir / "foreign" / "shard-00000.h5", "");
  o.out_dir = (dir / "foreign").string();
  EXPECT_NE(error_of([&] { prepare_output(o, list); }).find("but no make-shards.json"), std::string::npos);
}

}  // namespace
}  // namespace difftrain::data
