// What the CPU sparse-convolution paths share: the problem's shape, row helpers, and each path's entry point.
//
// sparse_conv (output-stationary): out[m, o] = sum over taps k and input channels i of o's group of
// features[neighbors[m, k], i] * weight[k, i_local, o]. Every path sums each output row in one thread, in an order
// fixed by the shape, so results are bitwise identical at any thread count. The paths are named and chosen in
// conv_algorithm.h, and dispatched to in sparse_conv.cpp; half and bfloat16 accumulate in float32.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "conv_algorithm.h"
#include "vectors.h"

namespace sparsevision {

// Output rows per block of the grouped path, and per parallel grain of the narrow-output and row-pair paths.
constexpr int64_t kRowBlock = 32;

struct ConvShape {
  int64_t outputs, taps, in_channels, out_channels, groups, in_per_group, out_per_group;
};

// Writes the taps k with row[k] >= 0 to present[0, count) in order and returns count, without branches: which taps
// a row has is unpredictable.
inline int64_t list_present_taps(const int32_t* row, int64_t taps, int64_t* present) {
  int64_t count = 0;
  for (int64_t k = 0; k < taps; ++k) {
    present[count] = k;
    count += row[k] >= 0;
  }
  return count;
}

// acc[c] += sum_i x[i] * w[i * stride + c * lanes ...] for one row; the other helper does two rows that share
// each weight load.
template <int Vectors, typename acc_t>
inline __attribute__((always_inline)) void accumulate_row(const acc_t* x, const acc_t* w, int64_t in_channels,
                                                          int64_t stride, Vector<acc_t>* acc) {
  for (int64_t i = 0; i < in_channels; ++i) {
    const acc_t v = x[i];
    const acc_t* w_row = w + i * stride;
    for (int c = 0; c < Vectors; ++c) acc[c] += v * load_vector(w_row + c * kLanes<acc_t>);
  }
}

template <int Vectors, typename acc_t>
inline __attribute__((always_inline)) void accumulate_row_pair(const acc_t* x0, const acc_t* x1, const acc_t* w,
                                                               int64_t in_channels, int64_t stride,
                                                               Vector<acc_t>* acc0, Vector<acc_t>* acc1) {
  for (int64_t i = 0; i < in_channels; ++i) {
    const acc_t v0 = x0[i], v1 = x1[i];
    const acc_t* w_row = w + i * stride;
    for (int c = 0; c < Vectors; ++c) {
      const Vector<acc_t> weights = load_vector(w_row + c * kLanes<acc_t>);
      acc0[c] += v0 * weights;
      acc1[c] += v1 * weights;
    }
  }
}

// Each path writes out [outputs, out_channels] from contiguous features [N, in_channels] and neighbors
// [outputs, taps], and a weight [taps, in_per_group, out_channels] of any strides, packed once per call.
// All but grouped_conv need groups == 1; row_pairs_conv and row_blocks_conv, out_channels a multiple of
// kOutputChannelMultiple; narrow_outputs_conv, at most kNarrowOutputs of them (conv_algorithm.h).
void row_pairs_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                    const ConvShape& shape, const at::Tensor& out);
void row_blocks_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                     const ConvShape& shape, const at::Tensor& out);
void narrow_outputs_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                         const ConvShape& shape, const at::Tensor& out);
void grouped_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                  const ConvShape& shape, const at::Tensor& out);

// grad_weight [taps, in_per_group, out_channels] of sparse_conv_weight_grad on `algorithm` (weight_grad.cpp), from
// contiguous features, grad_output of their dtype and neighbors, with at least one output row and input channel;
// kRegisterTiles needs groups == 1 and out_channels a multiple of kOutputChannelMultiple.
at::Tensor weight_grad_on(WeightGradAlgorithm algorithm, const at::Tensor& features, const at::Tensor& grad_output,
                          const at::Tensor& neighbors, const ConvShape& shape);

}  // namespace sparsevision
