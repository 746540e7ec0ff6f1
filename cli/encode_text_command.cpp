#include "cli/encode_text_command.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "cli/fail.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"
#include "distributed/communicator.h"
#include "distributed/mpi_session.h"
#include "model/frozen_text_encoder.h"
#include "monitoring/progress.h"

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
                    const data::TextEmbeddingShape& shape, bool overwrite) {
  if (!shard.text) return true;
  const bool same = sha256_in(shard.text_encoder) == encoder.sha256() &&
                    shard.text_tokenizer == encoder.tokenizer().describe() && *shard.text == shape;
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
                                  int64_t batch_size, const std::function<void(int64_t)>& on_captions) {
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
  out.null_states = half_bits(null.states);
  out.null_mask.assign(null.mask.data_ptr<uint8_t>(), null.mask.data_ptr<uint8_t>() + null.mask.numel());
  out.null_pooled = half_bits(null.pooled);
  out.encoder = encoder.identity();
  out.tokenizer = encoder.tokenizer().describe();
  return out;
}

}  // namespace

std::unique_ptr<EncodeTextCommand> add_encode_text_command(CLI::App& app) {
  auto c = std::make_unique<EncodeTextCommand>();
  auto* cmd = app.add_subcommand(
      "encode-text", "add precomputed text embeddings from a frozen TorchScript text encoder to every shard");
  c->app = cmd;
  cmd->add_option("--encoder", c->encoder_path, "TorchScript text encoder (docs/CONDITIONING.md)")->required();
  cmd->add_option("--data", c->data_dir, "shard directory; its shards are rewritten with the embeddings")->required();
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
    if (command.batch_size < 1) throw std::invalid_argument("--batch-size " + std::to_string(command.batch_size) + ": expected >= 1");
    if (command.threads < 1) throw std::invalid_argument("--threads " + std::to_string(command.threads) + ": expected >= 1");
    if (command.timeout_seconds <= 0) throw std::invalid_argument("--timeout: expected seconds > 0");
    torch::set_num_threads(command.threads);
    auto comm = make_communicator(session, torch::kCPU, {command.timeout_seconds});
    const model::FrozenTextEncoder encoder(command.encoder_path, model::make_text_tokenizer(command.tokenizer));
    const data::TextEmbeddingShape shape{encoder.max_tokens(), encoder.width(), encoder.pooled_width(), /*has_null=*/true};
    const std::vector<data::ShardInfo> shards =
        data::open_shard_directory(command.data_dir, data::shard_directory_geometry(command.data_dir));
    std::vector<size_t> mine;
    int64_t my_captions = 0, skipped = 0;
    for (size_t k = 0; k < shards.size(); ++k) {
      if (!needs_encoding(shards[k], encoder, shape, command.overwrite)) {
        ++skipped;
      } else if (static_cast<int>(k % static_cast<size_t>(world)) == rank) {
        mine.push_back(k);
        my_captions += shards[k].count;
      }
    }
    if (rank == 0) {
      std::printf("encode-text: %zu shard(s) in %s, %lld already encoded by %s; encoder %s, tokenizer %s\n",
                  shards.size(), command.data_dir.c_str(), static_cast<long long>(skipped), encoder.identity().c_str(),
                  data::to_string(shape).c_str(), encoder.tokenizer().describe().c_str());
      std::fflush(stdout);
    }
    comm->barrier("encode-text: every rank checked the shards");

    // Rank 0 reports its own share; the ranks' shares are within one shard of each other.
    std::unique_ptr<monitoring::RateProgress> progress;
    if (rank == 0 && my_captions > 0) progress = std::make_unique<monitoring::RateProgress>("encode-text", my_captions, 5.0, "captions");
    int64_t done = 0;
    for (const size_t k : mine) {
      const data::TextEmbeddings embeddings = encode_shard(shards[k], encoder, command.batch_size, [&](int64_t n) {
        done += n;
        if (progress) progress->update(static_cast<double>(done));
      });
      data::write_text_embeddings(shards[k].path, embeddings);
    }
    const auto totals = comm->allreduce_sum({double(mine.size()), double(done)}, "encode-text: every rank's shards done");
    if (rank == 0) {
      std::printf("encode-text: %lld shard(s) encoded now (%lld captions), %lld kept from an earlier run (%d rank%s)\n",
                  static_cast<long long>(totals[0]), static_cast<long long>(totals[1]), static_cast<long long>(skipped),
                  world, world == 1 ? "" : "s");
      std::fflush(stdout);
    }
    comm->barrier("encode-text: summary written");
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}

}  // namespace difftrain::cli
