// Prompts of a model trained on precomputed text embeddings (model.conditioning=precomputed,
// docs/CONDITIONING.md "Sampling"): each prompt's caption with its embedding, and the null
// condition of classifier-free guidance. Three sources, one result:
//   - free-text prompts run through the frozen TorchScript encoder the model was trained with
//     (encode_prompts);
//   - a prompt-embeddings file: `captions` + text_* datasets in the shard layout
//     (docs/SHARD_FORMAT.md; any shard with embeddings qualifies, images are not read), written
//     by `difftrain encode-text --prompts ... --out FILE.h5` (read/write_prompt_embeddings);
//   - a shard set's stored embeddings in the seeded evaluation order (shard_set_prompt_embeddings).
// Values are float16 on disk; the encoder's are rounded to float16 too, so a prompt gives the
// same images whichever way it arrives.
// Defines: TextConditioning, PromptEmbeddings, encode_prompts, read_prompt_embeddings,
// write_prompt_embeddings, shard_set_prompt_embeddings, check_encoder_for_model,
// resolve_for_model, pack_conditions, unpack_conditions, digest_of.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/unet.h"

namespace difftrain::model {
class FrozenTextEncoder;
}

namespace difftrain::eval {

// What a precomputed model was trained on (its config's model.* keys).
struct TextConditioning {
  int64_t tokens = 0, width = 0, pooled_width = 0;  // L = max_tokens, D = context_dim, D' = pooled_dim (0: none)
  std::string encoder;    // model.text_encoder, "<file> sha256:<hex>"; "" in checkpoints from before the key
  std::string null_kind;  // model.text_null: "empty" (the empty caption's embedding), "zeros", or "" (unknown)
  std::string origin;     // "checkpoint <dir>", for messages
};

struct PromptEmbeddings {
  std::vector<std::string> captions;  // (P)
  torch::Tensor states;               // (P, L, D) float32 holding float16 values
  torch::Tensor mask;                 // (P, L) bool, true = real token
  torch::Tensor pooled;               // (P, D') float32, undefined when D' = 0
  // The null condition, one row each; null_states undefined when the source carries none.
  torch::Tensor null_states, null_mask, null_pooled;  // (1, L, D), (1, L), (1, D')
  std::string encoder, tokenizer;     // the text_encoder / text_tokenizer attributes
  std::string null_kind;              // the text_null attribute: "empty", "zeros", or "" (not recorded)
  std::string source;                 // "prompt embeddings file x.h5", for messages

  int64_t size() const { return static_cast<int64_t>(captions.size()); }
};

// The encoder's embeddings of `captions`, rounded through float16 as stored embeddings are.
// null_kind "empty": the null condition is the encoder's embedding of the empty caption;
// "zeros": all zeros (mask too). Throws std::invalid_argument for another null_kind.
PromptEmbeddings encode_prompts(const model::FrozenTextEncoder& encoder, const std::vector<std::string>& captions,
                                const std::string& null_kind, int64_t batch_size = 64);

// Reads `captions`, text_states, text_mask, optional text_pooled and text_null_*, and the
// text_encoder / text_tokenizer / text_null attributes. Throws std::runtime_error
// "prompt embeddings file <path>: ..." naming the dataset for a missing file, a file that is
// not HDF5, a missing dataset, a wrong dtype or shape, or no prompt.
PromptEmbeddings read_prompt_embeddings(const std::string& path);

// Writes `e` in the shard layout without images (root attribute format = "difftrain-prompts"),
// atomically (temporary name, fsync, rename). The null rows are written when e.null_states is
// defined, the text_null attribute when e.null_kind is set.
void write_prompt_embeddings(const std::string& path, const PromptEmbeddings& e);

// The captions of the shard set `dir` in data::seeded_order(seed) with their stored embeddings,
// the first `limit` of them (0: all), and the first shard's null condition if stored.
// Throws std::runtime_error naming the directory when its shards carry no embeddings.
PromptEmbeddings shard_set_prompt_embeddings(const std::string& dir, uint64_t seed, int64_t limit);

// The SHA-256 hex of a "<file> sha256:<hex>" identity, or "" when it names none.
std::string sha256_in_identity(const std::string& identity);

// The encoder must be the one the model was trained with: a different SHA-256 than
// model.text_encoder is an error naming both; an unknown model.text_encoder only a warning.
// Its (L, D, D') must be the model's.
void check_encoder_for_model(const model::FrozenTextEncoder& encoder, const std::string& path,
                             const TextConditioning& model);

// Checks `e` against the model: shapes (L, D, D'), its encoder attribute against
// model.text_encoder, its text_null against model.text_null, and settles the null condition:
// e's own if it has one, else zeros when model.text_null = zeros, else an error saying what is
// missing. Errors name e.source and the dataset.
void resolve_for_model(PromptEmbeddings& e, const TextConditioning& model);

// One float32 row per image holding its context (L*D values), mask (L, 1.0 = real token) and
// pooled vector (D'): the tensor a precomputed DenoiserSource's network takes in place of
// tokens, so guidance batches conditional and null rows by concatenation like tokens.
torch::Tensor pack_conditions(const torch::Tensor& states, const torch::Tensor& mask, const torch::Tensor& pooled);
// rows (B, L*D + L + D') -> the UNet's Conditioning (pooled undefined when D' = 0).
model::Conditioning unpack_conditions(const torch::Tensor& rows, int64_t tokens, int64_t width, int64_t pooled_width);
// Rows `indices` of e, packed; and its null condition packed, (1, K).
torch::Tensor packed_rows(const PromptEmbeddings& e, const std::vector<int64_t>& indices);
torch::Tensor packed_null(const PromptEmbeddings& e);

// SHA-256 over captions, embeddings and the null condition: what sweep keys include.
std::string digest_of(const PromptEmbeddings& e);

}  // namespace difftrain::eval
