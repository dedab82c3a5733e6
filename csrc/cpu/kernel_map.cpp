// CPU kernels of sparsevision::kernel_map and sparsevision::downsample_indices.
//
// kernel_map: output site o reads, through tap k, the input at
// o * stride - padding + k * dilation. Inputs are sorted by linear key once;
// outputs are visited in sorted order, so the candidate keys of a line of taps
// (taps differing only along the last axis) increase too and one
// forward-moving cursor per line over the sorted inputs finds them all (a
// merge, no hashing). Submanifold maps are symmetric, so only the taps before
// the centre are searched. Work is split into blocks of sorted outputs, each
// with its own cursors; every table slot has exactly one writer, so the result
// does not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include "../coordinates.h"
#include "../registration.h"

namespace sparsevision {
namespace {

constexpr int64_t kOutputBlock = 2048;

// Stable LSD radix sort of keys (>= 0) in as few passes of at most 12 bits as the bits they use need; `rows`
// (when not empty) is permuted along with them.
void radix_sort(std::vector<int64_t>& keys, std::vector<int64_t>& rows) {
  constexpr int kMaxBits = 12;
  const int64_t count = static_cast<int64_t>(keys.size());
  const bool with_rows = !rows.empty();
  const uint64_t largest = count ? static_cast<uint64_t>(*std::max_element(keys.begin(), keys.end())) : 0;
  const int used_bits = largest ? 64 - __builtin_clzll(largest) : 0;
  const int passes = (used_bits + kMaxBits - 1) / kMaxBits;
  if (passes == 0) return;
  const int bits = (used_bits + passes - 1) / passes;
  const int64_t mask = (int64_t(1) << bits) - 1;
  std::vector<int64_t> key_buffer(count), row_buffer(with_rows ? count : 0), histogram(mask + 1);
  for (int shift = 0; shift < used_bits; shift += bits) {
    std::fill(histogram.begin(), histogram.end(), 0);
    for (int64_t i = 0; i < count; ++i) ++histogram[(keys[i] >> shift) & mask];
    int64_t total = 0;
    for (int64_t& bucket : histogram) total += std::exchange(bucket, total);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t target = histogram[(keys[i] >> shift) & mask]++;
      key_buffer[target] = keys[i];
      if (with_rows) row_buffer[target] = rows[i];
    }
    keys.swap(key_buffer);
    rows.swap(row_buffer);
  }
}

// Linear keys of all rows and the row order that sorts them. Raises on out-of-grid rows and duplicates.
struct SortedCoordinates {
  std::vector<int64_t> keys;   // sorted, then one sentinel larger than any key
  std::vector<int64_t> order;  // order[i] = row holding keys[i]

  int64_t size() const { return static_cast<int64_t>(order.size()); }

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
    keys.push_back(std::numeric_limits<int64_t>::max());
  }
};

at::Tensor kernel_map_cpu(const at::Tensor& in_indices_in, const at::Tensor& out_indices_in,
                          at::IntArrayRef spatial_shape, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation,
                          bool /*sites_checked: checking is free here*/) {
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

  // A submanifold map (same sites, stride 1, centred odd kernel) is symmetric: output o reads input i through
  // tap k iff o is i's neighbour through tap K-1-k, and the centre tap is the site itself. Only the taps before
  // the centre are searched; each hit is also written at its mirror.
  bool symmetric = same_sites;
  for (int axis = 0; axis < dims; ++axis) {
    symmetric = symmetric && geometry.stride[axis] == 1 && geometry.kernel[axis] % 2 == 1 &&
                geometry.padding[axis] == geometry.kernel[axis] / 2 * geometry.dilation[axis];
  }
  const int64_t searched_taps = symmetric ? taps / 2 : taps;

  // Taps are searched in lines: the taps that differ only along the last axis, whose candidate keys are the
  // line's first key plus multiples of the last axis's dilation. One forward-moving cursor per line.
  const int last = dims - 1;
  const int64_t line_length = geometry.kernel[last];
  const int64_t step = geometry.dilation[last];
  const int64_t lines = (searched_taps + line_length - 1) / line_length;
  std::vector<int64_t> line_offsets(lines * dims), line_deltas(lines, 0);
  int64_t window[kMaxDims], axis_strides[kMaxDims];
  for (int axis = last; axis >= 0; --axis) {
    window[axis] = (geometry.kernel[axis] - 1) * geometry.dilation[axis];
    axis_strides[axis] = axis == last ? 1 : axis_strides[axis + 1] * geometry.shape[axis + 1];
  }
  for (int64_t line = 0; line < lines; ++line) {
    geometry.tap_index(line * line_length, &line_offsets[line * dims]);
    for (int axis = 0; axis < dims; ++axis) {
      line_offsets[line * dims + axis] *= geometry.dilation[axis];
      line_deltas[line] += line_offsets[line * dims + axis] * axis_strides[axis];
    }
  }
  int32_t* result = neighbors.data_ptr<int32_t>();
  const int64_t* in_keys = inputs.keys.data();  // ends with a sentinel larger than every key
  const int64_t in_count = inputs.size();
  const int64_t blocks = (outputs + kOutputBlock - 1) / kOutputBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(lines);
    int64_t corner[kMaxDims], candidate[kMaxDims];
    for (int64_t block = begin; block < end; ++block) {
      std::fill(cursor.begin(), cursor.end(), -1);
      const int64_t block_end = std::min(outputs, (block + 1) * kOutputBlock);
      for (int64_t position = block * kOutputBlock; position < block_end; ++position) {
        const int64_t row = sorted_outputs.order[position];
        const int32_t* site = out_data + row * (dims + 1);
        int32_t* row_result = result + row * taps;
        if (symmetric) row_result[searched_taps] = static_cast<int32_t>(row);
        // Sites whose whole window lies inside the grid (most of them) skip the per-axis checks.
        bool interior = true;
        for (int axis = 0; axis < dims; ++axis) {
          corner[axis] = site[axis + 1] * geometry.stride[axis] - geometry.padding[axis];
          interior = interior && corner[axis] >= 0 && corner[axis] + window[axis] < geometry.shape[axis];
        }
        const int64_t corner_key = interior ? linear_key(site[0], corner, geometry.shape, dims) : 0;
        for (int64_t line = 0; line < lines; ++line) {
          const int64_t first_tap = line * line_length;
          int64_t first = 0, count = std::min(line_length, searched_taps - first_tap);
          int64_t seek_key, tap0_key;  // cursor target; key of the line's tap 0 (maybe off the grid)
          if (interior) {
            seek_key = tap0_key = corner_key + line_deltas[line];
          } else {
            bool inside = true;
            for (int axis = 0; axis < last; ++axis) {
              candidate[axis] = corner[axis] + line_offsets[line * dims + axis];
              inside = inside && candidate[axis] >= 0 && candidate[axis] < geometry.shape[axis];
            }
            if (!inside) continue;
            // Only the taps whose last coordinate is on the grid (others would wrap into the next line).
            while (first < count && corner[last] + first * step < 0) ++first;
            while (count > first && corner[last] + (count - 1) * step >= geometry.shape[last]) --count;
            if (first == count) continue;
            candidate[last] = 0;
            const int64_t line_start_key = linear_key(site[0], candidate, geometry.shape, dims);
            tap0_key = line_start_key + corner[last];
            seek_key = line_start_key + std::max<int64_t>(corner[last], 0);
          }
          // seek_key (the window's first on-grid cell of this line) never decreases from one sorted output
          // to the next, so the cursor stays there; the line's taps are scanned from it.
          int64_t& at = cursor[line];
          if (at < 0) {
            at = std::lower_bound(in_keys, in_keys + in_count, seek_key) - in_keys;
          } else {
            while (in_keys[at] < seek_key) ++at;
          }
          int64_t scan = at;
          for (int64_t t = first; t < count; ++t) {
            const int64_t key = tap0_key + t * step;
            while (in_keys[scan] < key) ++scan;
            if (in_keys[scan] != key) continue;
            const int32_t input = static_cast<int32_t>(inputs.order[scan]);
            row_result[first_tap + t] = input;
            if (symmetric) result[int64_t(input) * taps + (taps - 1 - first_tap - t)] = static_cast<int32_t>(row);
          }
        }
      }
    }
  });
  return neighbors;
}

at::Tensor downsample_indices_cpu(const at::Tensor& indices_in, at::IntArrayRef spatial_shape,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, bool /*sites_checked: checking is free here*/) {
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
  // per tap); a row's candidates are their product. Each row owns `per_row` slots, -1 where unused: per axis,
  // at most as many outputs as taps t with t * dilation in one residue class modulo the stride.
  const int64_t rows = indices.size(0);
  int64_t per_row = 1;
  for (int axis = 0; axis < dims; ++axis) {
    TORCH_CHECK_VALUE(geometry.kernel[axis] <= 64, "downsample_indices: kernel sizes above 64 are not supported");
    std::vector<int64_t> per_residue(geometry.stride[axis], 0);
    for (int64_t t = 0; t < geometry.kernel[axis]; ++t) {
      ++per_residue[t * geometry.dilation[axis] % geometry.stride[axis]];
    }
    per_row *= *std::max_element(per_residue.begin(), per_residue.end());
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
        const int64_t padded = site[axis + 1] + geometry.padding[axis];
        if (geometry.dilation[axis] == 1) {  // the outputs o with padded - (kernel - 1) <= o * stride <= padded
          const int64_t low = std::max<int64_t>(0, padded - geometry.kernel[axis] + geometry.stride[axis]);
          const int64_t high = std::min(out_shape[axis] - 1, padded / geometry.stride[axis]);
          for (int64_t o = low / geometry.stride[axis]; o <= high; ++o) reached[axis][counts[axis]++] = o;
        } else {
          for (int64_t t = 0; t < geometry.kernel[axis]; ++t) {
            const int64_t numerator = padded - t * geometry.dilation[axis];
            if (numerator >= 0 && numerator % geometry.stride[axis] == 0 &&
                numerator / geometry.stride[axis] < out_shape[axis]) {
              reached[axis][counts[axis]++] = numerator / geometry.stride[axis];
            }
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
at::Tensor invert_kernel_map_cpu(const at::Tensor& neighbors_in, int64_t num_inputs,
                                 bool /*map_checked: checking is free here*/) {
  TORCH_CHECK_VALUE(neighbors_in.dim() == 2 && neighbors_in.scalar_type() == at::kInt,
                    "invert_kernel_map: neighbors must be an int32 [M, K] kernel map");
  TORCH_CHECK_VALUE(num_inputs >= 0, "invert_kernel_map: num_inputs must be >= 0, got ", num_inputs);
  check_row_count(num_inputs, "invert_kernel_map: the input");
  check_row_count(neighbors_in.size(0), "invert_kernel_map: neighbors");
  const at::Tensor neighbors = neighbors_in.contiguous();
  const int64_t outputs = neighbors.size(0), taps = neighbors.size(1);
  at::Tensor inverse = at::full({num_inputs, taps}, -1, neighbors.options());
  const int32_t* map = neighbors.data_ptr<int32_t>();
  int32_t* result = inverse.data_ptr<int32_t>();
  for (int64_t m = 0; m < outputs; ++m) {
    for (int64_t k = 0; k < taps; ++k) {
      const int32_t n = map[m * taps + k];
      if (n == -1) continue;
      TORCH_CHECK_VALUE(n >= 0 && n < num_inputs, "invert_kernel_map: kernel map entries must be -1 or input rows in "
                        "[0, ", num_inputs, "), got ", n);
      int32_t& slot = result[int64_t(n) * taps + k];
      TORCH_CHECK_VALUE(slot < 0, "invert_kernel_map: input ", n, " is read by outputs ", slot, " and ", m,
                        " through tap ", k, "; that is not a convolution's kernel map");
      slot = static_cast<int32_t>(m);
    }
  }
  return inverse;
}

}  // namespace

void register_kernel_map_cpu(torch::Library& m) {
  m.impl("kernel_map", &kernel_map_cpu);
  m.impl("downsample_indices", &downsample_indices_cpu);
  m.impl("invert_kernel_map", &invert_kernel_map_cpu);
}

}  // namespace sparsevision
