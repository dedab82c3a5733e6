// Shared argument checks of the sparse-convolution kernels (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "coordinates.h"
#include "devices.h"

namespace sparsevision {

// The CPU kernel of sparsevision::sparse_conv (csrc/cpu/sparse_conv.cpp), for kernels that defer to it.
at::Tensor sparse_conv_on_cpu(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                              const at::Tensor& inverse_neighbors, int64_t groups);

// features [N, C_in], weight [taps, C_in / groups, C_out] of the same dtype, neighbors int32 [M, taps].
inline void check_conv_arguments(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                                 int64_t groups) {
  TORCH_CHECK_VALUE(features.dim() == 2, "sparse_conv: features must be [N, C], got ", features.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3, "sparse_conv: weight must be [taps, in/groups, out], got ", weight.sizes());
  TORCH_CHECK_VALUE(neighbors.dim() == 2 && neighbors.scalar_type() == at::kInt,
                    "sparse_conv: neighbors must be an int32 [M, taps] kernel map");
  TORCH_CHECK_VALUE(neighbors.size(1) == weight.size(0), "sparse_conv: kernel map has ", neighbors.size(1),
                    " taps but weight has ", weight.size(0));
  TORCH_CHECK_VALUE(groups >= 1 && features.size(1) % groups == 0 && weight.size(2) % groups == 0,
                    "sparse_conv: channels must divide into ", groups, " groups");
  TORCH_CHECK_VALUE(weight.size(1) * groups == features.size(1), "sparse_conv: features have ", features.size(1),
                    " channels but weight expects ", weight.size(1) * groups);
  TORCH_CHECK_VALUE(features.scalar_type() == weight.scalar_type(), "sparse_conv: features are ",
                    features.scalar_type(), " but weight is ", weight.scalar_type());
  check_same_device("sparse_conv", {{"features", features}, {"weight", weight}, {"neighbors", neighbors}});
  check_row_count(features.size(0), "sparse_conv: features");
}

// features [N, C_in], grad_output [M, C_out], neighbors int32 [M, taps].
inline void check_weight_grad_arguments(const at::Tensor& features, const at::Tensor& grad_output,
                                        const at::Tensor& neighbors, int64_t groups) {
  TORCH_CHECK_VALUE(features.dim() == 2, "sparse_conv_weight_grad: features must be [N, C], got ", features.sizes());
  TORCH_CHECK_VALUE(neighbors.dim() == 2 && neighbors.scalar_type() == at::kInt,
                    "sparse_conv_weight_grad: neighbors must be an int32 [M, taps] kernel map");
  TORCH_CHECK_VALUE(grad_output.dim() == 2 && grad_output.size(0) == neighbors.size(0),
                    "sparse_conv_weight_grad: grad_output must be [M, out] with M = kernel map rows");
  TORCH_CHECK_VALUE(groups >= 1 && features.size(1) % groups == 0 && grad_output.size(1) % groups == 0,
                    "sparse_conv_weight_grad: channels must divide into ", groups, " groups");
  check_same_device("sparse_conv_weight_grad",
                    {{"features", features}, {"grad_output", grad_output}, {"neighbors", neighbors}});
}

// A contiguous CPU int32 kernel map holds only -1 or rows of the input (< rows); checked in parallel.
inline void check_neighbor_range(const at::Tensor& neighbors, int64_t rows, const char* op) {
  const int32_t* data = neighbors.data_ptr<int32_t>();
  std::atomic<bool> valid{true};
  at::parallel_for(0, neighbors.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    int32_t lowest = -1, highest = -1;   // min/max reductions vectorise (a per-entry test did not: 1 cycle each)
    for (int64_t i = begin; i < end; ++i) {
      lowest = std::min(lowest, data[i]);
      highest = std::max(highest, data[i]);
    }
    if (lowest < -1 || highest >= rows) valid = false;
  });
  TORCH_CHECK_VALUE(valid.load(), op, ": kernel map entries must be -1 or rows of features (< ", rows, ")");
}

}  // namespace sparsevision
