// The named paths (algorithms) of the CPU sparse convolution and its weight gradient, and the one function that
// chooses between them from the shapes. The names equal sparsevision.ops.conv_algorithms' ConvAlgorithm and
// WeightGradAlgorithm values; Python asks for them, and forces a path, through sparsevision._C (extension.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace sparsevision {

enum class ConvAlgorithm {
  kRowPairs,        // groups == 1: fixed row pairs' accumulators in vector registers (conv_row_pairs.cpp)
  kRowBlocks,       // groups == 1, wide weights: blocks of rows walked tap by tap (conv_row_blocks.cpp)
  kNarrowOutputs,   // groups == 1, at most kNarrowOutputs outputs: dot products along input channels
  kGrouped,         // any layer, chosen for grouped and depthwise ones (conv_grouped.cpp)
};

enum class WeightGradAlgorithm {
  kRegisterTiles,   // groups == 1: register-blocked tiles in blocks of output rows (weight_grad.cpp)
  kGrouped,         // groups > 1: one task per (tap, input-channel block)
};

// Layers with at most this many outputs (and one group) take kNarrowOutputs, which sums each output along the input
// channels in vectors: another order than the wider paths.
constexpr int64_t kNarrowOutputs = 8;

// kRowPairs, kRowBlocks and kRegisterTiles work on whole chunks of this many output channels; other layers are padded
// with zero weight (or output-gradient) columns to a multiple of it (see padded_outputs in sparse_conv.cpp).
constexpr int64_t kOutputChannelMultiple = 16;

// kRowBlocks pays off once the weight is over about a quarter of L2 (measured on Zen 4: faster from 64 x 64 channels
// with 27 taps on, slower at 32 x 32).
constexpr int64_t kWideWeightBytes = 256 * 1024;

// What the choice of a path depends on: the weight's shape [taps, in_channels / groups, out_channels] and the dtype.
struct ConvProblem {
  int64_t in_channels, out_channels, taps, groups;
  at::ScalarType dtype;
};

inline int64_t padded_output_channels(int64_t out_channels) {
  return (out_channels + kOutputChannelMultiple - 1) / kOutputChannelMultiple * kOutputChannelMultiple;
}

// The path the shapes choose (the forced path aside).
ConvAlgorithm choose_conv_algorithm(const ConvProblem& problem);

// The path a call takes: this thread's forced path if there is one, else choose_conv_algorithm. A forced path that
// cannot take the problem, or one of another device, raises ValueError.
ConvAlgorithm conv_algorithm_for(const ConvProblem& problem);

WeightGradAlgorithm choose_weight_grad_algorithm(int64_t groups);

const char* algorithm_name(ConvAlgorithm algorithm);
const char* algorithm_name(WeightGradAlgorithm algorithm);

// Forces this thread's sparse convolutions onto the path named `name` (a ConvAlgorithm value of any device); an empty
// name clears it. The name is checked when a convolution runs.
void force_conv_algorithm(const std::string& name);

// The dtype named as torch names it without "torch." ("float32", "bfloat16"...); ValueError for any other.
at::ScalarType floating_dtype_named(const std::string& name);

}  // namespace sparsevision
