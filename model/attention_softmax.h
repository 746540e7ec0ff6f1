// Attention's softmax under bf16, fused with the casts around it (issue 12):
//   forward   P = softmax(S) over each row's valid keys, S float32 in, P bfloat16 out;
//   backward  dS = P ⊙ (dP − Σ_k P_k dP_k), P bfloat16 and dP float32 in, dS bfloat16 out.
// Eager autocast attention runs softmax on the float32 scores, keeps that float32 output for the
// backward, then casts it to bf16 for the product with V; its backward casts dP to float32, runs
// softmax's backward and casts dS back: four full passes over (B, heads, Nq, Nk) more each way.
// Rows of an image whose keys are all masked are zero (its attention output is zero), as in
// model/attention.cpp's eager path.
#pragma once

#include <cstdint>

namespace difftrain::model {

// scores: rows × n float32, overwritten (it is scratch: it holds e^(s − max) afterwards);
// weights: rows × n bfloat16 bits. valid: (rows / rows_per_image) × n bytes, nonzero = the key
// may be attended to, or nullptr (every key valid). Rows are split across at::get_num_threads().
void softmax_rows_to_bf16(float* scores, uint16_t* weights, int64_t rows, int64_t n, const uint8_t* valid,
                          int64_t rows_per_image);

// dscores = weights ⊙ (dweights − rowsum(weights ⊙ dweights)), rows × n; weights and dscores bfloat16 bits.
void softmax_backward_rows_bf16(const uint16_t* weights, const float* dweights, uint16_t* dscores, int64_t rows,
                                int64_t n);

}  // namespace difftrain::model
