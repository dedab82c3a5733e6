// Sparse-coordinate geometry shared by the kernel-map kernels (CPU and CUDA).
//
// Coordinates are [N, 1 + D] int32 rows (batch, c_1, ..., c_D). A row's linear
// key is its row-major position in the [batch, *spatial_shape] grid, in int64.
// Kernel taps are enumerated row-major, last axis fastest (spconv's weight order).
// ConvolutionGeometry is trivially copyable, so CUDA kernels take it by value.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <vector>

// Loops over the axes run over kMaxDims, unrolled, skipping the axes past `dims`: with constant indices the
// per-axis arrays stay in registers on a GPU (indexed by a runtime axis, they would be placed in local memory).
#ifdef __CUDACC__
#define SV_HOST_DEVICE __host__ __device__
#define SV_UNROLL _Pragma("unroll")
#else
#define SV_HOST_DEVICE
#define SV_UNROLL _Pragma("GCC unroll 4")
#endif

namespace sparsevision {

constexpr int kMaxDims = 4;
// Kernel-map entries are int32 row numbers, so no side of a map may have more rows.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

inline void check_row_count(int64_t rows, const char* name) {
  TORCH_CHECK_VALUE(rows <= kMaxRows, name, " has ", rows, " rows; kernel maps hold int32 row numbers, so at most ",
                    kMaxRows, " rows fit: split the batch");
}

struct ConvolutionGeometry {
  int dims = 0;
  int64_t taps = 1;
  int64_t shape[kMaxDims] = {};
  int64_t kernel[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  int64_t padding[kMaxDims] = {};
  int64_t dilation[kMaxDims] = {};

  ConvolutionGeometry(at::IntArrayRef spatial_shape, at::IntArrayRef kernel_size, at::IntArrayRef strides,
                      at::IntArrayRef paddings, at::IntArrayRef dilations) {
    dims = static_cast<int>(spatial_shape.size());
    TORCH_CHECK_VALUE(dims >= 1 && dims <= kMaxDims, "sparse convolution supports 1 to ", kMaxDims,
                      " spatial axes, got ", dims);
    for (const auto& argument : {kernel_size, strides, paddings, dilations}) {
      TORCH_CHECK_VALUE(static_cast<int>(argument.size()) == dims, "expected ", dims,
                        " values per geometry argument, got ", argument.size());
    }
    for (int axis = 0; axis < dims; ++axis) {
      shape[axis] = spatial_shape[axis];
      kernel[axis] = kernel_size[axis];
      stride[axis] = strides[axis];
      padding[axis] = paddings[axis];
      dilation[axis] = dilations[axis];
      TORCH_CHECK_VALUE(shape[axis] > 0 && kernel[axis] > 0 && stride[axis] > 0 && dilation[axis] > 0 &&
                            padding[axis] >= 0,
                        "spatial_shape, kernel_size, stride and dilation must be positive and padding >= 0");
      taps *= kernel[axis];
    }
  }

  // Tap number -> per-axis kernel index (last axis fastest).
  SV_HOST_DEVICE void tap_index(int64_t tap, int64_t* index) const {
    SV_UNROLL
    for (int axis = kMaxDims - 1; axis >= 0; --axis) {
      if (axis >= dims) continue;
      index[axis] = tap % kernel[axis];
      tap /= kernel[axis];
    }
  }
};

SV_HOST_DEVICE inline int64_t linear_key(int64_t batch, const int64_t* coordinates, const int64_t* shape, int dims) {
  int64_t key = batch;
  SV_UNROLL
  for (int axis = 0; axis < kMaxDims; ++axis) {
    if (axis < dims) key = key * shape[axis] + coordinates[axis];
  }
  return key;
}

inline void check_coordinate_tensor(const at::Tensor& indices, int dims, const char* name) {
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) == dims + 1, name, " must be [N, ", dims + 1,
                    "] (batch, then ", dims, " coordinates), got ", indices.sizes());
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kInt, name, " must be int32, got ", indices.scalar_type());
  check_row_count(indices.size(0), name);
}

}  // namespace sparsevision
