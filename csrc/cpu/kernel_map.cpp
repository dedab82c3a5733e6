// CPU kernels of sparsevision::kernel_map and sparsevision::downsample_indices.
//
// kernel_map: output site o reads, through tap k, the input at
// o * stride - padding + k * dilation. Inputs are sorted by linear key once;
// outputs are visited in sorted order, so for a fixed tap the candidate keys
// of in-range candidates increase too and one forward-moving cursor over the
// sorted inputs finds them all (a merge, no hashing). Work is split into
// blocks of sorted outputs, each with one cursor per tap and writing only its
// own rows, so the result does not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include "../coordinates.h"

namespace sparsevision {
namespace {

constexpr int64_t kOutputBlock = 2048;

// Stable LSD radix sort of keys (>= 0), 11 bits per pass over the bits they use; `rows` (when not empty)
// is permuted along with them.
void radix_sort(std::vector<int64_t>& keys, std::vector<int64_t>& rows) {
  constexpr int kBits = 11;
  constexpr int64_t kBuckets = int64_t(1) << kBits;
  const int64_t count = static_cast<int64_t>(keys.size());
  const bool with_rows = !rows.empty();
  const int64_t largest = count ? *std::max_element(keys.begin(), keys.end()) : 0;
  std::vector<int64_t> key_buffer(count), row_buffer(with_rows ? count : 0), histogram(kBuckets);
  for (int shift = 0; shift < 64 && (largest >> shift) > 0; shift += kBits) {
    std::fill(histogram.begin(), histogram.end(), 0);
    for (int64_t i = 0; i < count; ++i) ++histogram[(keys[i] >> shift) & (kBuckets - 1)];
    int64_t total = 0;
    for (int64_t& bucket : histogram) total += std::exchange(bucket, total);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t target = histogram[(keys[i] >> shift) & (kBuckets - 1)]++;
      key_buffer[target] = keys[i];
      if (with_rows) row_buffer[target] = rows[i];
    }
    keys.swap(key_buffer);
    rows.swap(row_buffer);
  }
}

// Linear keys of all rows and the row order that sorts them. Raises on out-of-grid rows and duplicates.
struct SortedCoordinates {
  std::vector<int64_t> keys;   // sorted
  std::vector<int64_t> order;  // order[i] = row holding keys[i]

  SortedCoordinates(const at::Tensor& indices, const int64_t* shape, int dims, const char* name) {
    const int64_t rows = indices.size(0);
    const int32_t* data = indices.data_ptr<int32_t>();
    std::vector<int64_t> unsorted(rows);
    at::parallel_for(0, rows, 8192, [&](int64_t begin, int64_t end) {
      int64_t coordinates[kMaxDims];
      for (int64_t row = begin; row < end; ++row) {
        const int32_t* entry = data + row * (dims + 1);
        bool inside = entry[0] >= 0;
        for (int axis = 0; axis < dims; ++axis) {
          coordinates[axis] = entry[axis + 1];
          inside = inside && coordinates[axis] >= 0 && coordinates[axis] < shape[axis];
        }
        unsorted[row] = inside ? linear_key(entry[0], coordinates, shape, dims) : -1;
      }
    });
    for (int64_t row = 0; row < rows; ++row) {
      TORCH_CHECK_VALUE(unsorted[row] >= 0, name, " row ", row, " lies outside the grid (negative batch or a ",
                        "coordinate outside spatial_shape)");
    }
    order.resize(rows);
    std::iota(order.begin(), order.end(), 0);
    keys = std::move(unsorted);
    if (!std::is_sorted(keys.begin(), keys.end())) radix_sort(keys, order);
    for (int64_t i = 1; i < rows; ++i) {
      TORCH_CHECK_VALUE(keys[i] != keys[i - 1], name, " has duplicate coordinates (rows ", order[i - 1], " and ",
                        order[i], "); merge duplicate points first (e.g. voxelize with mean pooling)");
    }
  }
};

at::Tensor kernel_map_cpu(const at::Tensor& in_indices_in, const at::Tensor& out_indices_in,
                          at::IntArrayRef spatial_shape, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvolutionGeometry geometry(spatial_shape, kernel_size, stride, padding, dilation);
  const int dims = geometry.dims;
  check_coordinate_tensor(in_indices_in, dims, "kernel_map: in_indices");
  check_coordinate_tensor(out_indices_in, dims, "kernel_map: out_indices");
  const at::Tensor in_indices = in_indices_in.contiguous();
  const at::Tensor out_indices = out_indices_in.contiguous();
  const int64_t outputs = out_indices.size(0);
  const int64_t taps = geometry.taps;
  at::Tensor neighbors = at::full({outputs, taps}, -1, out_indices.options());
  if (outputs == 0 || in_indices.size(0) == 0) return neighbors;

  const SortedCoordinates inputs(in_indices, geometry.shape, dims, "kernel_map: in_indices");
  // Visit outputs in lexicographic order (sorted once more unless they are the input sites); their own
  // grid only needs to bound their coordinates.
  const int32_t* out_data = out_indices.data_ptr<int32_t>();
  const bool same_sites = in_indices.data_ptr() == out_indices.data_ptr() && in_indices.size(0) == outputs;
  std::optional<SortedCoordinates> own_order;
  if (!same_sites) {
    int64_t out_bounds[kMaxDims];
    for (int axis = 0; axis < dims; ++axis) {
      int64_t largest = 0;
      for (int64_t row = 0; row < outputs; ++row) {
        largest = std::max<int64_t>(largest, out_data[row * (dims + 1) + axis + 1]);
      }
      out_bounds[axis] = largest + 1;
    }
    own_order.emplace(out_indices, out_bounds, dims, "kernel_map: out_indices");
  }
  const SortedCoordinates& sorted_outputs = same_sites ? inputs : *own_order;

  std::vector<int64_t> tap_offsets(taps * dims), tap_deltas(taps, 0);
  int64_t window[kMaxDims], axis_strides[kMaxDims];
  for (int axis = dims - 1; axis >= 0; --axis) {
    window[axis] = (geometry.kernel[axis] - 1) * geometry.dilation[axis];
    axis_strides[axis] = axis == dims - 1 ? 1 : axis_strides[axis + 1] * geometry.shape[axis + 1];
  }
  for (int64_t tap = 0; tap < taps; ++tap) {
    geometry.tap_index(tap, &tap_offsets[tap * dims]);
    for (int axis = 0; axis < dims; ++axis) {
      tap_deltas[tap] += tap_offsets[tap * dims + axis] * geometry.dilation[axis] * axis_strides[axis];
    }
  }
  int32_t* result = neighbors.data_ptr<int32_t>();
  const int64_t* in_keys = inputs.keys.data();
  const int64_t in_count = static_cast<int64_t>(inputs.keys.size());
  const int64_t blocks = (outputs + kOutputBlock - 1) / kOutputBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(taps);
    int64_t candidate[kMaxDims], corner[kMaxDims];
    for (int64_t block = begin; block < end; ++block) {
      std::fill(cursor.begin(), cursor.end(), -1);
      const int64_t last = std::min(outputs, (block + 1) * kOutputBlock);
      for (int64_t position = block * kOutputBlock; position < last; ++position) {
        const int64_t row = sorted_outputs.order[position];
        const int32_t* site = out_data + row * (dims + 1);
        int32_t* row_result = result + row * taps;
        // Sites whose whole window lies inside the grid (most of them) skip the per-axis checks: their
        // candidate keys are the window corner's key plus a per-tap constant.
        bool interior = true;
        for (int axis = 0; axis < dims; ++axis) {
          corner[axis] = site[axis + 1] * geometry.stride[axis] - geometry.padding[axis];
          interior = interior && corner[axis] >= 0 && corner[axis] + window[axis] < geometry.shape[axis];
        }
        const int64_t corner_key = interior ? linear_key(site[0], corner, geometry.shape, dims) : 0;
        for (int64_t tap = 0; tap < taps; ++tap) {
          int64_t key;
          if (interior) {
            key = corner_key + tap_deltas[tap];
          } else {
            bool inside = true;
            for (int axis = 0; axis < dims; ++axis) {
              candidate[axis] = corner[axis] + tap_offsets[tap * dims + axis] * geometry.dilation[axis];
              inside = inside && candidate[axis] >= 0 && candidate[axis] < geometry.shape[axis];
            }
            if (!inside) continue;
            key = linear_key(site[0], candidate, geometry.shape, dims);
          }
          int64_t& at = cursor[tap];
          if (at < 0) {
            at = std::lower_bound(in_keys, in_keys + in_count, key) - in_keys;
          } else {
            while (at < in_count && in_keys[at] < key) ++at;
          }
          if (at < in_count && in_keys[at] == key) row_result[tap] = static_cast<int32_t>(inputs.order[at]);
        }
      }
    }
  });
  return neighbors;
}

at::Tensor downsample_indices_cpu(const at::Tensor& indices_in, at::IntArrayRef spatial_shape,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  const ConvolutionGeometry geometry(spatial_shape, kernel_size, stride, padding, dilation);
  const int dims = geometry.dims;
  check_coordinate_tensor(indices_in, dims, "downsample_indices: indices");
  const at::Tensor indices = indices_in.contiguous();
  const SortedCoordinates inputs(indices, geometry.shape, dims, "downsample_indices: indices");
  int64_t out_shape[kMaxDims];
  for (int axis = 0; axis < dims; ++axis) {
    out_shape[axis] = (geometry.shape[axis] + 2 * geometry.padding[axis] -
                       geometry.dilation[axis] * (geometry.kernel[axis] - 1) - 1) / geometry.stride[axis] + 1;
    TORCH_CHECK_VALUE(out_shape[axis] > 0, "downsample_indices: the kernel does not fit the grid on axis ", axis);
  }
  // Per axis, the outputs an input coordinate reaches are found once (a few divisions per axis instead of
  // per tap); a row's candidates are their product. Each row owns `per_row` slots, -1 where unused.
  const int64_t rows = indices.size(0);
  int64_t per_row = 1;
  for (int axis = 0; axis < dims; ++axis) {
    TORCH_CHECK_VALUE(geometry.kernel[axis] <= 64, "downsample_indices: kernel sizes above 64 are not supported");
    per_row *= geometry.kernel[axis];
  }
  std::vector<int64_t> candidates(rows * per_row);
  const int32_t* data = indices.data_ptr<int32_t>();
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    int64_t reached[kMaxDims][64], counts[kMaxDims], output[kMaxDims], position[kMaxDims];
    for (int64_t row = begin; row < end; ++row) {
      const int32_t* site = data + row * (dims + 1);
      int64_t* slots = candidates.data() + row * per_row;
      std::fill(slots, slots + per_row, -1);
      bool any = true;
      for (int axis = 0; axis < dims; ++axis) {
        counts[axis] = 0;
        for (int64_t t = 0; t < geometry.kernel[axis]; ++t) {
          const int64_t numerator = site[axis + 1] + geometry.padding[axis] - t * geometry.dilation[axis];
          if (numerator >= 0 && numerator % geometry.stride[axis] == 0 &&
              numerator / geometry.stride[axis] < out_shape[axis]) {
            reached[axis][counts[axis]++] = numerator / geometry.stride[axis];
          }
        }
        any = any && counts[axis] > 0;
        position[axis] = 0;
      }
      if (!any) continue;
      for (int64_t slot = 0;; ++slot) {  // odometer over the per-axis lists
        for (int axis = 0; axis < dims; ++axis) output[axis] = reached[axis][position[axis]];
        slots[slot] = linear_key(site[0], output, out_shape, dims);
        int axis = dims - 1;
        while (axis >= 0 && ++position[axis] == counts[axis]) position[axis--] = 0;
        if (axis < 0) break;
      }
    }
  });
  candidates.erase(std::remove(candidates.begin(), candidates.end(), -1), candidates.end());
  std::vector<int64_t> no_rows;
  radix_sort(candidates, no_rows);
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  const int64_t outputs = static_cast<int64_t>(candidates.size());
  at::Tensor result = at::empty({outputs, dims + 1}, indices.options());
  int32_t* out = result.data_ptr<int32_t>();
  at::parallel_for(0, outputs, 8192, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t key = candidates[row];
      for (int axis = dims - 1; axis >= 0; --axis) {
        out[row * (dims + 1) + axis + 1] = static_cast<int32_t>(key % out_shape[axis]);
        key /= out_shape[axis];
      }
      out[row * (dims + 1)] = static_cast<int32_t>(key);
    }
  });
  return result;
}

// inverse[neighbors[m, k], k] = m. In a kernel map an input feeds at most one output per tap; a map where two
// outputs read the same input through the same tap is rejected (it has no inverse).
at::Tensor invert_kernel_map_cpu(const at::Tensor& neighbors_in, int64_t num_inputs) {
  TORCH_CHECK_VALUE(neighbors_in.dim() == 2 && neighbors_in.scalar_type() == at::kInt,
                    "invert_kernel_map: neighbors must be an int32 [M, K] kernel map");
  const at::Tensor neighbors = neighbors_in.contiguous();
  const int64_t outputs = neighbors.size(0), taps = neighbors.size(1);
  at::Tensor inverse = at::full({num_inputs, taps}, -1, neighbors.options());
  const int32_t* map = neighbors.data_ptr<int32_t>();
  int32_t* result = inverse.data_ptr<int32_t>();
  for (int64_t m = 0; m < outputs; ++m) {
    for (int64_t k = 0; k < taps; ++k) {
      const int32_t n = map[m * taps + k];
      if (n < 0) continue;
      TORCH_CHECK_VALUE(n < num_inputs, "invert_kernel_map: entry ", n, " is not an input row below ", num_inputs);
      int32_t& slot = result[int64_t(n) * taps + k];
      TORCH_CHECK_VALUE(slot < 0, "invert_kernel_map: input ", n, " is read by outputs ", slot, " and ", m,
                        " through tap ", k, "; that is not a convolution's kernel map");
      slot = static_cast<int32_t>(m);
    }
  }
  return inverse;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsevision, CPU, m) {
  m.impl("kernel_map", &kernel_map_cpu);
  m.impl("downsample_indices", &downsample_indices_cpu);
  m.impl("invert_kernel_map", &invert_kernel_map_cpu);
}

}  // namespace sparsevision
