// What the evaluation library refuses before any work: sample and sweep options
// out of bounds, prompts and captions that are not UTF-8 or hold NUL bytes
// (docs/SHARD_FORMAT.md); and the SHA-256 that keys sweep points (eval/digest.h).
// Prompt embeddings of precomputed-conditioning models (eval/prompt_embeddings.h): packing,
// the file round trip, and the checks against the model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <string>

#include "data/shard_format.h"
#include "data/shard_writer.h"
#include "eval/digest.h"
#include "eval/fid_sweep.h"
#include "eval/prompt_embeddings.h"
#include "eval/prompt_set.h"
#include "eval/prompts.h"
#include "eval/sample_job.h"
#include "tests/test_dirs.h"

namespace de = difftrain::eval;
namespace dd = difftrain::data;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

de::SampleOptions good_sample() {
  de::SampleOptions o;
  o.checkpoint = "run";
  o.out_dir = "out";
  o.prompts = {"a red circle", "a blue square"};
  return o;
}

de::SweepOptions good_sweep() {
  de::SweepOptions o;
  o.checkpoint = "run";
  o.out_dir = "out";
  return o;
}

#define EXPECT_ERROR(statement, text)                            \
  do {                                                           \
    const std::string message = error_of([&] { statement; });    \
    EXPECT_NE(message.find(text), std::string::npos) << message; \
  } while (0)

}  // namespace

TEST(Digest, Sha256MatchesTheStandardVectors) {
  EXPECT_EQ(de::Sha256().bytes("abc", 3).hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(de::Sha256().hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // Length-prefixed texts: a different split is a different digest.
  EXPECT_NE(de::Sha256().text("ab").text("c").hex(), de::Sha256().text("a").text("bc").hex());
  const auto dir = fresh_test_dir();
  std::ofstream(dir / "abc") << "abc";
  EXPECT_EQ(de::sha256_of_file((dir / "abc").string()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Utf8, StrictDecoding) {
  EXPECT_TRUE(dd::is_valid_utf8("plain ascii"));
  EXPECT_TRUE(dd::is_valid_utf8("ünïcødé ✓ \xF0\x9F\x98\x80"));
  EXPECT_FALSE(dd::is_valid_utf8("caf\xE9"));              // Latin-1
  EXPECT_FALSE(dd::is_valid_utf8("\xC0\xAF"));             // overlong '/'
  EXPECT_FALSE(dd::is_valid_utf8("\xED\xA0\x80"));         // UTF-16 surrogate
  EXPECT_FALSE(dd::is_valid_utf8("\xF4\x90\x80\x80"));     // past U+10FFFF
  EXPECT_FALSE(dd::is_valid_utf8("\xE2\x9C"));             // truncated
  EXPECT_EQ(dd::caption_defect(std::string("a\0b", 3)), "contains a NUL byte (at byte 1)");
  EXPECT_EQ(dd::caption_defect("caf\xE9"), "is not valid UTF-8");
  EXPECT_EQ(dd::caption_defect("fine"), "");
}

TEST(ShardWriter, RefusesCaptionsWithNulOrInvalidUtf8NamingTheSample) {
  const auto dir = fresh_test_dir();
  dd::ShardWriter writer((dir / "s.h5").string(), {2, 2, 3});
  const std::vector<uint8_t> pixels(12, 7);
  writer.add(pixels.data(), "fine");
  EXPECT_ERROR(writer.add(pixels.data(), std::string("bad\0caption", 11)), "caption of sample 1 contains a NUL byte");
  EXPECT_ERROR(writer.add(pixels.data(), "caf\xE9"), "caption of sample 1 is not valid UTF-8");
  EXPECT_EQ(writer.count(), 1);
}

TEST(Prompts, FilesWithNulOrInvalidUtf8AreRefusedNamingTheLine) {
  const auto dir = fresh_test_dir();
  const auto nul = (dir / "nul.txt").string();
  std::ofstream(nul) << "ok\n" << std::string("a\0b", 3) << "\n";
  EXPECT_ERROR(de::read_prompt_file(nul), "prompt file " + nul + " line 2 contains a NUL byte");
  const auto latin = (dir / "latin.txt").string();
  std::ofstream(latin) << "\ncaf\xE9\n";
  EXPECT_ERROR(de::read_prompt_file(latin), "line 2 is not valid UTF-8");
  EXPECT_ERROR(de::read_prompt_file(dir.string()), "is a directory");
}

TEST(SampleOptions, RefusesAbsurdValuesNamingTheOption) {
  EXPECT_NO_THROW(de::validate_sample_options(good_sample()));
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  auto o = good_sample();
  o.guidance = {1.0, inf};
  EXPECT_ERROR(de::validate_sample_options(o), "--guidance = inf: expected a finite number");
  o = good_sample();
  o.guidance = {nan};
  EXPECT_ERROR(de::validate_sample_options(o), "--guidance = nan");
  o = good_sample();
  o.images_per_prompt = 1000000000000;
  EXPECT_ERROR(de::validate_sample_options(o), "--images-per-prompt = 1000000000000: expected 1..1000000");
  o = good_sample();
  o.images_per_prompt = 400000;
  o.guidance = {1, 3};
  EXPECT_ERROR(de::validate_sample_options(o), "2 prompts x --images-per-prompt 400000 x 2 guidance scale(s) = 1600000");
  o = good_sample();
  o.batch_size = 0;
  EXPECT_ERROR(de::validate_sample_options(o), "--batch-size = 0");
  o = good_sample();
  o.image_size = -1;
  EXPECT_ERROR(de::validate_sample_options(o), "--image-size = -1");
  o = good_sample();
  o.max_tokens = de::kMaxTokens + 1;
  EXPECT_ERROR(de::validate_sample_options(o), "--max-tokens = 4097");
  o = good_sample();
  o.sampler.steps = 0;
  EXPECT_ERROR(de::validate_sample_options(o), "--steps = 0");
  o = good_sample();
  o.prompts = {"ok", "caf\xE9"};
  EXPECT_ERROR(de::validate_sample_options(o), "prompt 2 is not valid UTF-8");
}

TEST(SweepOptions, RefusesAbsurdValuesNamingTheOption) {
  EXPECT_NO_THROW(de::validate_sweep_options(good_sweep()));
  auto o = good_sweep();
  o.guidance = {1.0, std::numeric_limits<double>::infinity()};
  EXPECT_ERROR(de::validate_sweep_options(o), "--guidance = inf");
  o = good_sweep();
  o.steps = {4, 0};
  EXPECT_ERROR(de::validate_sweep_options(o), "--steps = 0");
  o = good_sweep();
  o.steps = {4, 8, 4};
  EXPECT_ERROR(de::validate_sweep_options(o), "--steps = 4: expected each value once");
  o = good_sweep();
  o.eta = {0.0, std::nan("")};
  EXPECT_ERROR(de::validate_sweep_options(o), "--eta = nan");
  o = good_sweep();
  o.guidance.clear();
  EXPECT_ERROR(de::validate_sweep_options(o), "--guidance = (nothing)");
  o = good_sweep();
  o.samples = 1;
  EXPECT_ERROR(de::validate_sweep_options(o), "--samples = 1");
  o = good_sweep();
  o.batch_size = de::kMaxSweepBatch + 1;
  EXPECT_ERROR(de::validate_sweep_options(o), "--batch-size = 65537");
  o = good_sweep();
  o.reference_limit = -5;
  EXPECT_ERROR(de::validate_sweep_options(o), "--reference-limit = -5");
}

namespace {

// Three prompts with L = 4, D = 3, D' = 2, values exact in float16, and the null condition.
de::PromptEmbeddings small_embeddings() {
  de::PromptEmbeddings e;
  e.captions = {"a red circle", "a blue square", ""};
  e.states = torch::arange(36, torch::kFloat32).reshape({3, 4, 3}).div(8);
  e.mask = torch::tensor({1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0}, torch::kUInt8).reshape({3, 4}).to(torch::kBool);
  e.pooled = torch::tensor({0.5f, -1.0f, 2.0f, 0.25f, 0.0f, 3.0f}).reshape({3, 2});
  e.null_states = torch::full({1, 4, 3}, -0.5f);
  e.null_mask = torch::tensor({1, 0, 0, 0}, torch::kUInt8).reshape({1, 4}).to(torch::kBool);
  e.null_pooled = torch::tensor({{1.5f, -2.0f}});
  e.encoder = "enc.pt sha256:" + std::string(64, 'a');
  e.tokenizer = "bytes";
  e.null_kind = "empty";
  e.source = "test embeddings";
  return e;
}

de::TextConditioning small_model() { return {4, 3, 2, "enc.pt sha256:" + std::string(64, 'a'), "empty", "model m"}; }

}  // namespace

TEST(PromptEmbeddings, PackedRowsUnpackToTheSameConditioning) {
  const auto e = small_embeddings();
  const auto rows = de::packed_rows(e, {2, 0});
  ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{2, 4 * 3 + 4 + 2}));
  const auto c = de::unpack_conditions(rows, 4, 3, 2);
  EXPECT_TRUE(torch::equal(c.context, torch::stack({e.states[2], e.states[0]})));
  EXPECT_TRUE(torch::equal(c.mask, torch::stack({e.mask[2], e.mask[0]})));
  EXPECT_EQ(c.mask.scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(c.pooled, torch::stack({e.pooled[2], e.pooled[0]})));
  const auto null = de::unpack_conditions(de::packed_null(e), 4, 3, 2);
  EXPECT_TRUE(torch::equal(null.context, e.null_states));
  EXPECT_TRUE(torch::equal(null.mask, e.null_mask));
  // Without a pooled vector the rows hold context and mask only.
  const auto no_pooled = de::unpack_conditions(de::pack_conditions(e.states, e.mask, torch::Tensor()), 4, 3, 0);
  EXPECT_FALSE(no_pooled.pooled.defined());
  EXPECT_TRUE(torch::equal(no_pooled.context, e.states));
  EXPECT_ERROR(de::unpack_conditions(rows, 4, 3, 0), "packed conditions");
}

TEST(PromptEmbeddings, FileRoundTripIsExact) {
  const auto dir = fresh_test_dir();
  const auto path = (dir / "p.h5").string();
  const auto e = small_embeddings();
  de::write_prompt_embeddings(path, e);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const auto r = de::read_prompt_embeddings(path);
  EXPECT_EQ(r.captions, e.captions);
  EXPECT_TRUE(torch::equal(r.states, e.states));
  EXPECT_TRUE(torch::equal(r.mask, e.mask));
  EXPECT_TRUE(torch::equal(r.pooled, e.pooled));
  EXPECT_TRUE(torch::equal(r.null_states, e.null_states));
  EXPECT_TRUE(torch::equal(r.null_mask, e.null_mask));
  EXPECT_TRUE(torch::equal(r.null_pooled, e.null_pooled));
  EXPECT_EQ(r.encoder, e.encoder);
  EXPECT_EQ(r.tokenizer, "bytes");
  EXPECT_EQ(r.null_kind, "empty");
  EXPECT_EQ(de::digest_of(r), de::digest_of(e));
  EXPECT_ERROR(de::read_prompt_embeddings((dir / "missing.h5").string()),
               "prompt embeddings file " + (dir / "missing.h5").string() + ": does not exist");
}

TEST(PromptEmbeddings, ResolveChecksShapesEncoderAndNull) {
  auto e = small_embeddings();
  EXPECT_NO_THROW(de::resolve_for_model(e, small_model()));
  auto model = small_model();
  model.width = 5;
  e = small_embeddings();
  EXPECT_ERROR(de::resolve_for_model(e, model), "test embeddings: dataset 'text_states' has shape (3, 4, 3), but model m");
  model = small_model();
  model.pooled_width = 0;
  EXPECT_ERROR(de::resolve_for_model(e, model), "dataset 'text_pooled' has shape (3, 2)");
  model = small_model();
  model.encoder = "enc.pt sha256:" + std::string(64, 'b');
  EXPECT_ERROR(de::resolve_for_model(e, model), "is not the encoder model m was trained with");
  model.encoder = "";  // a checkpoint from before model.text_encoder: not checked
  EXPECT_NO_THROW(de::resolve_for_model(e, model));
  // No null condition: zeros when the model says so, else an error naming what is missing.
  e = small_embeddings();
  e.null_states = e.null_mask = e.null_pooled = torch::Tensor();
  e.null_kind = "";
  EXPECT_ERROR(de::resolve_for_model(e, small_model()), "has no null condition (datasets 'text_null_states'");
  model = small_model();
  model.null_kind = "zeros";
  de::resolve_for_model(e, model);
  EXPECT_EQ(e.null_states.abs().sum().item<float>(), 0.0f);
  EXPECT_FALSE(e.null_mask.any().item<bool>());
  EXPECT_EQ(e.null_pooled.sizes(), (std::vector<int64_t>{1, 2}));
  // A file's null condition of the other kind is refused.
  e = small_embeddings();
  EXPECT_ERROR(de::resolve_for_model(e, model), "text_null = empty, but model m was trained with model.text_null = zeros");
}

TEST(PromptEmbeddings, Sha256OfAnIdentity) {
  EXPECT_EQ(de::sha256_in_identity("enc.pt sha256:abc"), "abc");
  EXPECT_EQ(de::sha256_in_identity("openai/clip"), "");
}

TEST(SampleOptions, PromptEmbeddingsBringTheirOwnPrompts) {
  auto o = good_sample();
  o.prompts.clear();
  EXPECT_ERROR(de::validate_sample_options(o), "no prompts given");
  o.prompt_embeddings = "p.h5";
  EXPECT_NO_THROW(de::validate_sample_options(o));
  o.text_encoder = "enc.pt";
  EXPECT_ERROR(de::validate_sample_options(o), "--text-encoder or --prompt-embeddings, not both");
  o = good_sample();
  o.prompt_embeddings = "p.h5";
  EXPECT_ERROR(de::validate_sample_options(o), "brings its own prompts");
  o = good_sample();
  o.tokenizer = "spiece.model";
  EXPECT_ERROR(de::validate_sample_options(o), "--tokenizer spiece.model is for --text-encoder");
}
