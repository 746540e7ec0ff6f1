#include "cli/encode_text_command.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "cli/fail.h"
#include "cli/shard_pass.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"
#include "distributed/communicator.h"
#include "distributed/mpi_session.h"
#include "eval/prompt_embeddings.h"
#include "eval/prompts.h"
#include "model/frozen_text_encoder.h"

namespace difftrain::cli {
namespace {

// The hex after "sha256:" in a `text_encoder` attribute, or "" (written by other tooling).
std::string sha256_in(const std::string& identity) {
  const auto at = identity.find("sha256:");
  if (at == std::string::npos) return "";
  return identity.substr(at + 7, identity.find(' ', at) == std::string::npos ? std::string::npos
                                                                             : identity.find(' ', at) - at - 7);
}

// Whether a shard must be encoded: no embeddings yet, or --overwrite. One that
// already holds this encoder's (same SHA-256, tokenizer and shape) is kept; one
// from another encoder is an error without --overwrite. Checked for every shard
// on every rank before anything is written, so a refusal changes no file.
bool needs_encoding(const data::ShardInfo& shard, const model::FrozenTextEncoder& encoder,
                    const data::TextEmbeddingShape& shape, const std::string& null_kind, bool overwrite) {
  if (!shard.text) return true;
  // Shards written before the attribute hold the empty caption's embedding.
  const std::string shard_null = data::read_shard_attribute(shard.path, data::kTextNullAttribute).value_or("empty");
  if (shard_null != null_kind && !overwrite)
    throw std::runtime_error("shard " + shard.path + ": its null condition is text_null = " + shard_null +
                             ", not --null " + null_kind + "; pass --overwrite to replace the embeddings");
  const bool same = sha256_in(shard.text_encoder) == encoder.sha256() &&
                    shard.text_tokenizer == encoder.tokenizer().describe() && *shard.text == shape &&
                    shard_null == null_kind;
  if (same && !overwrite) return false;
  if (!same && !overwrite) {
    throw std::runtime_error("shard " + shard.path + ": has text embeddings (" + data::to_string(*shard.text) +
                             ") from encoder \"" + shard.text_encoder + "\" with tokenizer \"" + shard.text_tokenizer +
                             "\", not from \"" + encoder.identity() + "\" with tokenizer \"" +
                             encoder.tokenizer().describe() + "\" (" + data::to_string(shape) +
                             "); pass --overwrite to replace them");
  }
  return true;
}

// float32 → IEEE half bits, round to nearest even (what numpy's astype(float16) does).
std::vector<uint16_t> half_bits(const torch::Tensor& values) {
  const torch::Tensor half = values.to(torch::kHalf).contiguous();
  std::vector<uint16_t> bits(static_cast<size_t>(half.numel()));
  std::memcpy(bits.data(), half.data_ptr(), bits.size() * sizeof(uint16_t));
  return bits;
}

data::TextEmbeddings encode_shard(const data::ShardInfo& shard, const model::FrozenTextEncoder& encoder,
                                  const std::string& null_kind, int64_t batch_size,
                                  const std::function<void(int64_t)>& on_captions) {
  data::ShardReader reader(shard);
  std::vector<torch::Tensor> states, masks, pooled;
  for (int64_t start = 0; start < shard.count; start += batch_size) {
    std::vector<std::string> captions(static_cast<size_t>(std::min(batch_size, shard.count - start)));
    for (size_t i = 0; i < captions.size(); ++i) reader.read(start + static_cast<int64_t>(i), nullptr, &captions[i]);
    model::TextEmbeddingBatch batch = encoder.encode(captions);
    states.push_back(batch.states);
    masks.push_back(batch.mask);
    pooled.push_back(batch.pooled);
    on_captions(static_cast<int64_t>(captions.size()));
  }
  data::TextEmbeddings out;
  out.shape = {encoder.max_tokens(), encoder.width(), encoder.pooled_width(), /*has_null=*/true};
  out.count = shard.count;
  out.states = half_bits(torch::cat(states));
  const torch::Tensor mask = torch::cat(masks).contiguous();
  out.mask.assign(mask.data_ptr<uint8_t>(), mask.data_ptr<uint8_t>() + mask.numel());
  out.pooled = half_bits(torch::cat(pooled));
  const model::TextEmbeddingBatch& null = encoder.null_condition();
  const bool zeros = null_kind == "zeros";
  out.null_states = half_bits(zeros ? torch::zeros_like(null.states) : null.states);
  const torch::Tensor null_mask = (zeros ? torch::zeros_like(null.mask) : null.mask).contiguous();
  out.null_mask.assign(null_mask.data_ptr<uint8_t>(), null_mask.data_ptr<uint8_t>() + null_mask.numel());
  out.null_pooled = half_bits(zeros ? torch::zeros_like(null.pooled) : null.pooled);
  out.encoder = encoder.identity();
  out.tokenizer = encoder.tokenizer().describe();
  out.null_kind = null_kind;
  return out;
}

}  // namespace

std::unique_ptr<EncodeTextCommand> add_encode_text_command(CLI::App& app) {
  auto c = std::make_unique<EncodeTextCommand>();
  auto* cmd = app.add_subcommand(
      "encode-text", "add precomputed text embeddings from a frozen TorchScript text encoder to every shard");
  c->app = cmd;
  cmd->add_option("--encoder", c->encoder_path, "TorchScript text encoder (docs/CONDITIONING.md)")->required();
  auto* data = cmd->add_option("--data", c->data_dir, "shard directory; its shards are rewritten with the embeddings");
  cmd->add_option("--prompt", c->prompts, "a prompt to embed into --out (repeatable), instead of --data");
  cmd->add_option("--prompt-file", c->prompt_file, "a file of prompts, one per line, to embed into --out");
  auto* out = cmd->add_option("--out", c->out, "prompt-embeddings file (.h5) for `sample --prompt-embeddings`");
  out->excludes(data);
  cmd->add_option("--null", c->null_kind, "null condition stored: empty (the empty caption's embedding, default) or zeros")
      ->check(CLI::IsMember({"empty", "zeros"}));
  cmd->add_option("--tokenizer", c->tokenizer, "bytes (ByT5 ids, default) or a SentencePiece .model file");
  cmd->add_option("--batch-size", c->batch_size, "captions per forward pass (64)");
  cmd->add_option("--threads", c->threads, "torch threads per rank (1)");
  cmd->add_flag("--overwrite", c->overwrite, "replace embeddings made by another encoder or tokenizer");
  cmd->add_option("--timeout", c->timeout_seconds, "seconds a rank may wait for the others (86400)");
  return c;
}

int run_encode_text_command(int argc, char** argv, const EncodeTextCommand& command) {
  MpiSession session(&argc, &argv);
  const int rank = session.rank(), world = session.world_size();
  set_error_rank(rank, world);
  try {
    check_pass_options(command.batch_size, command.threads, command.timeout_seconds);
    const bool to_file = !command.out.empty();
    if (command.data_dir.empty() && !to_file)
      throw std::invalid_argument("encode-text: give --data DIR (shards) or --out FILE.h5 with --prompt / --prompt-file");
    if (!to_file && (!command.prompts.empty() || !command.prompt_file.empty()))
      throw std::invalid_argument("encode-text: --prompt and --prompt-file go with --out FILE.h5, not --data");
    std::vector<std::string> prompts = command.prompts;
    for (size_t i = 0; i < prompts.size(); ++i) eval::check_prompt(prompts[i], "--prompt " + std::to_string(i + 1));
    if (!command.prompt_file.empty()) {
      const auto more = eval::read_prompt_file(command.prompt_file);
      prompts.insert(prompts.end(), more.begin(), more.end());
    }
    if (to_file && prompts.empty()) throw std::invalid_argument("encode-text: --out needs prompts (--prompt, --prompt-file)");
    torch::set_num_threads(command.threads);
    auto comm = make_communicator(session, torch::kCPU, {command.timeout_seconds});
    const model::FrozenTextEncoder encoder(command.encoder_path, model::make_text_tokenizer(command.tokenizer));
    if (to_file) {
      // A few prompts: rank 0 alone.
      if (rank == 0) {
        eval::write_prompt_embeddings(command.out,
                                      eval::encode_prompts(encoder, prompts, command.null_kind, command.batch_size));
        std::printf("encode-text: %zu prompt(s) embedded by %s (tokenizer %s, null condition %s) into %s\n",
                    prompts.size(), encoder.identity().c_str(), encoder.tokenizer().describe().c_str(),
                    command.null_kind.c_str(), command.out.c_str());
        std::fflush(stdout);
      }
      comm->barrier("encode-text: prompt file written");
      return 0;
    }
    const data::TextEmbeddingShape shape{encoder.max_tokens(), encoder.width(), encoder.pooled_width(), /*has_null=*/true};
    const std::vector<data::ShardInfo> shards =
        data::open_shard_directory(command.data_dir, data::shard_directory_geometry(command.data_dir));
    ShardPass pass;
    pass.command = "encode-text";
    pass.unit = "captions";
    pass.needs_work = [&](const data::ShardInfo& shard) {
      return needs_encoding(shard, encoder, shape, command.null_kind, command.overwrite);
    };
    pass.header = [&](int64_t kept) {
      return std::to_string(shards.size()) + " shard(s) in " + command.data_dir + ", " + std::to_string(kept) +
             " already encoded by " + encoder.identity() + "; encoder " + data::to_string(shape) + ", tokenizer " +
             encoder.tokenizer().describe();
    };
    pass.run = [&](const data::ShardInfo& shard, const std::function<void(int64_t)>& done) {
      data::write_text_embeddings(shard.path, encode_shard(shard, encoder, command.null_kind, command.batch_size, done));
    };
    run_shard_pass(*comm, shards, pass);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

}  // namespace difftrain::cli
