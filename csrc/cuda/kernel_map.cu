// CUDA kernels of sparsevision::kernel_map, downsample_indices and invert_kernel_map.
//
// Sort-based like the CPU kernels: input rows get int64 linear keys, which are
// sorted once (at::sort, stable); every (output, tap) slot is then filled by
// one thread with a binary search. Each slot has exactly one writer and no
// floating point is involved, so results are deterministic. Bad input
// (out-of-grid rows, duplicates, maps without an inverse) is detected on the
// device and reported as a ValueError after one scalar copy to the host; a
// caller that has checked its sites or map before (`sites_checked`,
// `map_checked`) skips that copy, so kernel_map and invert_kernel_map then
// never wait for the device. Skipping is memory-safe: out-of-grid rows are
// never matched and out-of-range map entries are never written through.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../coordinates.h"
#include "../devices.h"
#include "../registration.h"
#include "launch.h"

namespace sparsevision {
namespace {

// keys[row] = linear key of the row in [batch, *shape], or -1 when the row lies outside that grid.
__global__ void linear_keys_kernel(const int32_t* __restrict__ indices, int64_t rows,
                                   const ConvolutionGeometry geometry, int64_t* __restrict__ keys) {
  const int dims = geometry.dims;
  SV_GRID_STRIDE_LOOP(row, rows) {
    const int32_t* entry = indices + row * (dims + 1);
    int64_t coordinates[kMaxDims];
    bool inside = entry[0] >= 0;
    SV_UNROLL
    for (int axis = 0; axis < kMaxDims; ++axis) {
      if (axis >= dims) continue;
      coordinates[axis] = entry[axis + 1];
      inside = inside && coordinates[axis] >= 0 && coordinates[axis] < geometry.shape[axis];
    }
    keys[row] = inside ? linear_key(entry[0], coordinates, geometry.shape, dims) : -1;
  }
}

// Sorted keys of the input rows and the rows holding them. Unless `checked`, raises on out-of-grid rows and
// duplicates: valid input costs one scalar copy to the host; only bad input pays more, to name the offending rows.
std::pair<at::Tensor, at::Tensor> sorted_input_keys(const at::Tensor& indices, const ConvolutionGeometry& geometry,
                                                    bool checked, const char* name) {
  const int64_t rows = indices.size(0);
  at::Tensor keys = at::empty({rows}, indices.options().dtype(at::kLong));
  if (rows > 0) {
    SV_LAUNCH(blocks_for(rows), kThreads, c10::cuda::getCurrentCUDAStream(), linear_keys_kernel)(
        indices.data_ptr<int32_t>(), rows, geometry, keys.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // The one-argument sort(true) would bind to sort(dim=1): spell every argument out.
  auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  if (rows == 0 || checked) return {sorted, order};
  // Out-of-grid keys are -1, so they sort first.
  const at::Tensor bad = at::cat({sorted.slice(0, 0, 1) < 0, sorted.slice(0, 1) == sorted.slice(0, 0, rows - 1)});
  if (!bad.any().item<bool>()) return {sorted, order};
  const at::Tensor outside = (keys < 0).nonzero();
  TORCH_CHECK_VALUE(outside.size(0) == 0, name, " row ", outside.size(0) ? outside[0][0].item<int64_t>() : 0,
                    " lies outside the grid (negative batch or a coordinate outside spatial_shape)");
  const int64_t at_position = bad.nonzero()[0][0].item<int64_t>() - 1;
  TORCH_CHECK_VALUE(false, name, " has duplicate coordinates (rows ", order[at_position].item<int64_t>(), " and ",
                    order[at_position + 1].item<int64_t>(),
                    "); merge duplicate points first (e.g. voxelize with mean pooling)");
}

__device__ int64_t lower_bound(const int64_t* __restrict__ keys, int64_t count, int64_t key) {
  int64_t low = 0, high = count;
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (keys[middle] < key) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// neighbors[m, tap] = the input row at out_indices[m] * stride - padding + tap * dilation, or -1.
__global__ void kernel_map_kernel(const int32_t* __restrict__ out_indices, int64_t outputs,
                                  const ConvolutionGeometry geometry, const int64_t* __restrict__ sorted_keys,
                                  const int64_t* __restrict__ order, int64_t inputs, int32_t* __restrict__ neighbors) {
  const int dims = geometry.dims;
  const int64_t taps = geometry.taps;
  SV_GRID_STRIDE_LOOP(slot, outputs * taps) {
    const int64_t m = slot / taps, tap = slot % taps;
    const int32_t* site = out_indices + m * (dims + 1);
    int64_t tap_index[kMaxDims], candidate[kMaxDims];
    geometry.tap_index(tap, tap_index);
    bool inside = site[0] >= 0;
    SV_UNROLL
    for (int axis = 0; axis < kMaxDims; ++axis) {
      if (axis >= dims) continue;
      candidate[axis] = site[axis + 1] * geometry.stride[axis] - geometry.padding[axis] +
                        tap_index[axis] * geometry.dilation[axis];
      inside = inside && candidate[axis] >= 0 && candidate[axis] < geometry.shape[axis];
    }
    int32_t found = -1;
    if (inside) {
      const int64_t key = linear_key(site[0], candidate, geometry.shape, dims);
      const int64_t position = lower_bound(sorted_keys, inputs, key);
      if (position < inputs && sorted_keys[position] == key) found = static_cast<int32_t>(order[position]);
    }
    neighbors[slot] = found;
  }
}

at::Tensor kernel_map_cuda(const at::Tensor& in_indices_in, const at::Tensor& out_indices_in,
                           at::IntArrayRef spatial_shape, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool sites_checked) {
  const ConvolutionGeometry geometry(spatial_shape, kernel_size, stride, padding, dilation);
  check_coordinate_tensor(in_indices_in, geometry.dims, "kernel_map: in_indices");
  check_coordinate_tensor(out_indices_in, geometry.dims, "kernel_map: out_indices");
  check_same_device("kernel_map", {{"in_indices", in_indices_in}, {"out_indices", out_indices_in}});
  const c10::cuda::CUDAGuard guard(in_indices_in.device());
  const at::Tensor in_indices = in_indices_in.contiguous();
  const at::Tensor out_indices = out_indices_in.contiguous();
  const int64_t outputs = out_indices.size(0);
  if (outputs == 0 || in_indices.size(0) == 0) return at::full({outputs, geometry.taps}, -1, out_indices.options());
  at::Tensor neighbors = at::empty({outputs, geometry.taps}, out_indices.options());  // the kernel fills every slot
  const auto [sorted_keys, order] = sorted_input_keys(in_indices, geometry, sites_checked, "kernel_map: in_indices");
  SV_LAUNCH(blocks_for(outputs * geometry.taps), kThreads, c10::cuda::getCurrentCUDAStream(),
            kernel_map_kernel)(out_indices.data_ptr<int32_t>(), outputs, geometry, sorted_keys.data_ptr<int64_t>(),
                               order.data_ptr<int64_t>(), in_indices.size(0), neighbors.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return neighbors;
}

// candidates[row, tap] = the key (in the output grid) of the output that reads `row` through `tap`, or -1.
__global__ void downsample_candidates_kernel(const int32_t* __restrict__ indices, int64_t rows,
                                             const ConvolutionGeometry geometry, const ConvolutionGeometry output,
                                             int64_t* __restrict__ candidates) {
  const int dims = geometry.dims;
  const int64_t taps = geometry.taps;
  SV_GRID_STRIDE_LOOP(slot, rows * taps) {
    const int64_t row = slot / taps, tap = slot % taps;
    const int32_t* site = indices + row * (dims + 1);
    int64_t tap_index[kMaxDims], reached[kMaxDims];
    geometry.tap_index(tap, tap_index);
    bool valid = true;
    SV_UNROLL
    for (int axis = 0; axis < kMaxDims; ++axis) {
      if (axis >= dims) continue;
      const int64_t numerator = site[axis + 1] + geometry.padding[axis] - tap_index[axis] * geometry.dilation[axis];
      valid = valid && numerator >= 0 && numerator % geometry.stride[axis] == 0 &&
              numerator / geometry.stride[axis] < output.shape[axis];
      reached[axis] = valid ? numerator / geometry.stride[axis] : 0;
    }
    candidates[slot] = valid ? linear_key(site[0], reached, output.shape, dims) : -1;
  }
}

// Writes the coordinates of every first occurrence of a key in `sorted` (ascending, -1 = no output) to row
// `position[i] - 1` of `coordinates`: the distinct output sites, in key order.
__global__ void decode_distinct_keys_kernel(const int64_t* __restrict__ sorted, const bool* __restrict__ first,
                                            const int64_t* __restrict__ position, int64_t count,
                                            const ConvolutionGeometry output, int32_t* __restrict__ coordinates) {
  const int dims = output.dims;
  SV_GRID_STRIDE_LOOP(i, count) {
    if (!first[i]) continue;
    int32_t* row = coordinates + (position[i] - 1) * (dims + 1);
    int64_t key = sorted[i];
    SV_UNROLL
    for (int axis = kMaxDims - 1; axis >= 0; --axis) {
      if (axis >= dims) continue;
      row[axis + 1] = static_cast<int32_t>(key % output.shape[axis]);
      key /= output.shape[axis];
    }
    row[0] = static_cast<int32_t>(key);
  }
}

// The output sites as one copy to the host decides their number (plus the input check unless `sites_checked`).
at::Tensor downsample_indices_cuda(const at::Tensor& indices_in, at::IntArrayRef spatial_shape,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool sites_checked) {
  const ConvolutionGeometry geometry(spatial_shape, kernel_size, stride, padding, dilation);
  const int dims = geometry.dims;
  check_coordinate_tensor(indices_in, dims, "downsample_indices: indices");
  const c10::cuda::CUDAGuard guard(indices_in.device());
  const at::Tensor indices = indices_in.contiguous();
  if (!sites_checked) sorted_input_keys(indices, geometry, false, "downsample_indices: indices");
  std::vector<int64_t> out_shape(dims), ones(dims, 1), zeros(dims, 0);
  for (int axis = 0; axis < dims; ++axis) {
    out_shape[axis] = (geometry.shape[axis] + 2 * geometry.padding[axis] -
                       geometry.dilation[axis] * (geometry.kernel[axis] - 1) - 1) / geometry.stride[axis] + 1;
    TORCH_CHECK_VALUE(out_shape[axis] > 0, "downsample_indices: the kernel does not fit the grid on axis ", axis);
  }
  const ConvolutionGeometry output(out_shape, ones, ones, zeros, ones);
  const int64_t count = indices.size(0) * geometry.taps;
  if (count == 0) return at::empty({0, dims + 1}, indices.options());
  at::Tensor candidates = at::empty({count}, indices.options().dtype(at::kLong));
  SV_LAUNCH(blocks_for(count), kThreads, c10::cuda::getCurrentCUDAStream(), downsample_candidates_kernel)(
      indices.data_ptr<int32_t>(), indices.size(0), geometry, output, candidates.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor sorted = std::get<0>(candidates.sort(/*stable=*/false, /*dim=*/0, /*descending=*/false));
  at::Tensor first = sorted >= 0;  // a key's first occurrence, never -1
  first.slice(0, 1).logical_and_(sorted.slice(0, 1) != sorted.slice(0, 0, count - 1));
  const at::Tensor position = first.cumsum(0, at::kLong);
  at::Tensor result = at::empty({position[count - 1].item<int64_t>(), dims + 1}, indices.options());
  SV_LAUNCH(blocks_for(count), kThreads, c10::cuda::getCurrentCUDAStream(), decode_distinct_keys_kernel)(
      sorted.data_ptr<int64_t>(), first.data_ptr<bool>(), position.data_ptr<int64_t>(), count, output,
      result.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

// inverse[neighbors[m, k], k] = m. An entry other than -1 outside [0, num_inputs) or a slot claimed twice (two
// outputs read one input through one tap) sets a bit of `problems` (1: out of range, 2: not invertible), if given.
__global__ void invert_kernel_map_kernel(const int32_t* __restrict__ neighbors, int64_t outputs, int64_t taps,
                                         int64_t num_inputs, int32_t* __restrict__ inverse,
                                         int32_t* __restrict__ problems) {
  SV_GRID_STRIDE_LOOP(slot, outputs * taps) {
    const int32_t n = neighbors[slot];
    if (n == -1) continue;
    if (n < 0 || n >= num_inputs) {
      if (problems) atomicOr(problems, 1);
      continue;
    }
    const int64_t m = slot / taps, tap = slot % taps;
    const int32_t previous = atomicCAS(inverse + int64_t(n) * taps + tap, -1, static_cast<int32_t>(m));
    if (previous != -1 && problems) atomicOr(problems, 2);
  }
}

at::Tensor invert_kernel_map_cuda(const at::Tensor& neighbors_in, int64_t num_inputs, bool map_checked) {
  TORCH_CHECK_VALUE(neighbors_in.dim() == 2 && neighbors_in.scalar_type() == at::kInt,
                    "invert_kernel_map: neighbors must be an int32 [M, K] kernel map");
  TORCH_CHECK_VALUE(num_inputs >= 0, "invert_kernel_map: num_inputs must be >= 0, got ", num_inputs);
  check_row_count(num_inputs, "invert_kernel_map: the input");
  check_row_count(neighbors_in.size(0), "invert_kernel_map: neighbors");
  const c10::cuda::CUDAGuard guard(neighbors_in.device());
  const at::Tensor neighbors = neighbors_in.contiguous();
  const int64_t outputs = neighbors.size(0), taps = neighbors.size(1);
  at::Tensor inverse = at::full({num_inputs, taps}, -1, neighbors.options());
  if (neighbors.numel() == 0) return inverse;
  at::Tensor problems = map_checked ? at::Tensor() : at::zeros({1}, neighbors.options());
  SV_LAUNCH(blocks_for(neighbors.numel()), kThreads, c10::cuda::getCurrentCUDAStream(),
            invert_kernel_map_kernel)(neighbors.data_ptr<int32_t>(), outputs, taps, num_inputs,
                                      inverse.data_ptr<int32_t>(),
                                      map_checked ? nullptr : problems.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (map_checked) return inverse;
  const int32_t found = problems.item<int32_t>();
  TORCH_CHECK_VALUE(!(found & 1), "invert_kernel_map: kernel map entries must be -1 or input rows in [0, ",
                    num_inputs, ")");
  TORCH_CHECK_VALUE(!(found & 2), "invert_kernel_map: an input is read by two outputs through the same tap; "
                    "that is not a convolution's kernel map");
  return inverse;
}

}  // namespace

void register_kernel_map_cuda(torch::Library& m) {
  m.impl("kernel_map", &kernel_map_cuda);
  m.impl("downsample_indices", &downsample_indices_cuda);
  m.impl("invert_kernel_map", &invert_kernel_map_cuda);
}

}  // namespace sparsevision
