// "All ranks hold identical weights", checked cheaply before every checkpoint
// (EDM's check before saving): each rank hashes its parameters
// (weights_fingerprint) and one all-reduce compares the hashes.
#pragma once

#include <torch/nn/module.h>

namespace difftrain {

class Communicator;

// Order-sensitive FNV-1a hash of every parameter's bytes, for "are these weights identical".
uint64_t weights_fingerprint(torch::nn::Module& module);

// Collective. Throws std::runtime_error naming `what` if any rank's weights differ.
void require_identical_weights(Communicator& comm, torch::nn::Module& module, const std::string& what);

}  // namespace difftrain
