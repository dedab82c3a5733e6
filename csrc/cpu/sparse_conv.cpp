// CPU kernels of sparsevision::sparse_conv and sparsevision::sparse_conv_weight_grad.
//
// sparse_conv (output-stationary): out[m, o] = sum over taps k (in order) and
//   input channels i of o's group (in order) of features[neighbors[m, k], i] * weight[k, i_local, o].
// Every output row is summed by one thread in that fixed order, so results are
// bitwise identical at any thread count. Three paths, chosen by shape alone:
// groups == 1 with out_channels a multiple of 16 keeps fixed row pairs' accumulators
// in vector registers (convolve_rows_in_registers), or, when the weight is larger than
// about a quarter of L2, walks fixed blocks of 64 rows tap by tap so each weight slice is
// reused by the whole block, four rows at a time (convolve_row_blocks; the same per-row
// sums, bit for bit); anything else processes rows in
// blocks, handling the rows that have tap k four at a time (convolve_range).
//
// sparse_conv_weight_grad: grad_weight[k, i_local, o] = sum over m (in order) of
//   features[neighbors[m, k], i] * grad_output[m, o]; the map is first regrouped into per-tap pair lists,
//   then each task walks one tap's list (register-blocked tiles when groups == 1 and out_channels is a
//   multiple of 16, else one task per (tap, input-channel block)).
//
// The input gradient is sparse_conv itself, on the inverse map with the
// transposed weight (see sparsevision/ops/sparse_conv.py). Half and bfloat16
// accumulate in float32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../sparse_conv.h"
#include "vectors.h"

namespace sparsevision {
namespace {

constexpr int64_t kRowBlock = 32;
constexpr int kRowsAtOnce = 4;
constexpr int64_t kChannelBlock = 16;

struct ConvShape {
  int64_t outputs, taps, in_channels, out_channels, groups, in_per_group, out_per_group;
};

// acc[r][o] += sum_i x_r[group(o) * in_per_group + i] * w[i, o] for up to four rows r.
template <typename acc_t>
inline __attribute__((always_inline)) void accumulate_rows(const acc_t* const* x, int rows, const acc_t* w,
                                                           acc_t* const* acc, const ConvShape& shape) {
  for (int64_t g = 0; g < shape.groups; ++g) {
    const int64_t o0 = g * shape.out_per_group, o1 = o0 + shape.out_per_group;
    const int64_t i0 = g * shape.in_per_group;
    for (int64_t i = 0; i < shape.in_per_group; ++i) {
      const acc_t* w_row = w + i * shape.out_channels;
      if (rows == kRowsAtOnce) {
        const acc_t v0 = x[0][i0 + i], v1 = x[1][i0 + i], v2 = x[2][i0 + i], v3 = x[3][i0 + i];
        acc_t *a0 = acc[0], *a1 = acc[1], *a2 = acc[2], *a3 = acc[3];
        for (int64_t o = o0; o < o1; ++o) {
          const acc_t wv = w_row[o];
          a0[o] += v0 * wv;
          a1[o] += v1 * wv;
          a2[o] += v2 * wv;
          a3[o] += v3 * wv;
        }
      } else {
        for (int r = 0; r < rows; ++r) {
          const acc_t v = x[r][i0 + i];
          acc_t* a = acc[r];
          for (int64_t o = o0; o < o1; ++o) a[o] += v * w_row[o];
        }
      }
    }
  }
}

// One block of output rows [first, last): accumulators in `acc` ([block, out_channels]).
// `convert_row` turns an input row into acc_t (identity for float/double).
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void convolve_block(const scalar_t* features, const acc_t* weight,
                                                          const int32_t* neighbors, scalar_t* out,
                                                          const ConvShape& shape, int64_t first, int64_t last,
                                                          acc_t* acc, acc_t* converted) {
  const int64_t rows = last - first;
  std::fill(acc, acc + rows * shape.out_channels, acc_t(0));
  int64_t present[kRowBlock];
  for (int64_t k = 0; k < shape.taps; ++k) {
    int count = 0;
    for (int64_t r = 0; r < rows; ++r) {
      if (neighbors[(first + r) * shape.taps + k] >= 0) present[count++] = r;
    }
    const acc_t* w = weight + k * shape.in_per_group * shape.out_channels;
    for (int start = 0; start < count; start += kRowsAtOnce) {
      const int batch = std::min(kRowsAtOnce, count - start);
      const acc_t* x[kRowsAtOnce];
      acc_t* a[kRowsAtOnce];
      for (int r = 0; r < batch; ++r) {
        const int64_t row = present[start + r];
        const scalar_t* source = features + int64_t(neighbors[(first + row) * shape.taps + k]) * shape.in_channels;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          x[r] = source;
        } else {
          acc_t* buffer = converted + r * shape.in_channels;
          for (int64_t i = 0; i < shape.in_channels; ++i) buffer[i] = static_cast<acc_t>(source[i]);
          x[r] = buffer;
        }
        a[r] = acc + row * shape.out_channels;
      }
      accumulate_rows<acc_t>(x, batch, w, a, shape);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < shape.out_channels; ++o) {
      out[(first + r) * shape.out_channels + o] = static_cast<scalar_t>(acc[r * shape.out_channels + o]);
    }
  }
}

template <typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void convolve_range(const scalar_t* features, const acc_t* weight, const int32_t* neighbors,
                                     scalar_t* out, const ConvShape* shape, int64_t begin, int64_t end) {
  std::vector<acc_t> acc(kRowBlock * shape->out_channels);
  std::vector<acc_t> converted(kRowsAtOnce * shape->in_channels);
  for (int64_t first = begin * kRowBlock; first < std::min(shape->outputs, end * kRowBlock); first += kRowBlock) {
    convolve_block<scalar_t, acc_t>(features, weight, neighbors, out, *shape, first,
                                    std::min(shape->outputs, first + kRowBlock), acc.data(), converted.data());
  }
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

// groups == 1 and out_channels a multiple of Chunk: output rows in fixed pairs (2p, 2p + 1), with Chunk-wide
// slices of both rows' accumulators in registers across all taps and input channels; a tap present in both rows
// shares its weight loads. A row's sum runs over taps, then input channels, in order; pairs are fixed by row
// number, not by the thread split, so every row takes the same instructions whatever the thread count and
// results are bitwise identical (tested).
template <int Chunk, typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void convolve_rows_in_registers(const scalar_t* features, const acc_t* weight,
                                                 const int32_t* neighbors, scalar_t* out, const ConvShape* shape,
                                                 int64_t first_pair, int64_t last_pair) {
  const int64_t taps = shape->taps, in_channels = shape->in_channels, out_channels = shape->out_channels;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  constexpr int kVectors = Chunk / kLanes<acc_t>;
  static_assert(Chunk % kLanes<acc_t> == 0, "Chunk must be a whole number of vectors");
  std::vector<acc_t> converted(convert ? 2 * taps * in_channels : 0);
  for (int64_t pair = first_pair; pair < last_pair; ++pair) {
    const int64_t m = 2 * pair;
    const int rows = m + 1 < shape->outputs ? 2 : 1;
    const int32_t* row_neighbors[2] = {neighbors + m * taps, neighbors + (m + rows - 1) * taps};
    if constexpr (convert) {
      for (int r = 0; r < rows; ++r) {
        for (int64_t k = 0; k < taps; ++k) {
          if (row_neighbors[r][k] < 0) continue;
          const scalar_t* source = features + int64_t(row_neighbors[r][k]) * in_channels;
          acc_t* target = converted.data() + (r * taps + k) * in_channels;
          for (int64_t i = 0; i < in_channels; ++i) target[i] = static_cast<acc_t>(source[i]);
        }
      }
    }
    auto input = [&](int r, int64_t k) -> const acc_t* {
      if constexpr (convert) {
        return converted.data() + (r * taps + k) * in_channels;
      } else {
        return features + int64_t(row_neighbors[r][k]) * in_channels;
      }
    };
    for (int64_t o0 = 0; o0 < out_channels; o0 += Chunk) {
      Vector<acc_t> acc0[kVectors] = {}, acc1[kVectors] = {};
      for (int64_t k = 0; k < taps; ++k) {
        const bool in_first = row_neighbors[0][k] >= 0, in_second = rows == 2 && row_neighbors[1][k] >= 0;
        const acc_t* w = weight + k * in_channels * out_channels + o0;
        if (in_first && in_second) {
          accumulate_row_pair<kVectors>(input(0, k), input(1, k), w, in_channels, out_channels, acc0, acc1);
        } else if (in_first) {
          accumulate_row<kVectors>(input(0, k), w, in_channels, out_channels, acc0);
        } else if (in_second) {
          accumulate_row<kVectors>(input(1, k), w, in_channels, out_channels, acc1);
        }
      }
      for (int r = 0; r < rows; ++r) {
        const Vector<acc_t>* acc = r == 0 ? acc0 : acc1;
        for (int c = 0; c < kVectors; ++c) {
          for (int j = 0; j < kLanes<acc_t>; ++j) {
            out[(m + r) * out_channels + o0 + c * kLanes<acc_t> + j] = static_cast<scalar_t>(acc[c][j]);
          }
        }
      }
    }
  }
}

// Wide layers (the weight over about a quarter of L2, see use_row_blocks): the same per-row sums as
// convolve_rows_in_registers, in another loop order. Fixed blocks of kWideRowBlock output rows keep their
// accumulators in a small buffer; for each tap k and Chunk output channels, the weight slice serves every row of the
// block that has tap k, four rows at a time (so each weight vector is loaded once for four rows). With enough rows
// (kPackRows) the weight is first repacked as [taps][out / Chunk][in][Chunk] and also split into kInputBlock input
// channels, so each slice is contiguous and stays in L1; with few rows the repack would cost more than it saves and
// the kernel reads the [taps][in][out] weight as it is. Each row still adds taps in order and, within a tap, input
// channels in order, one multiply-add per channel as in the other path (the accumulators are stored and reloaded
// exactly between input-channel blocks, and rows never mix), so results are bitwise identical to it whatever rows
// are grouped together and whichever weight layout is read.
constexpr int64_t kWideRowBlock = 64;
constexpr int64_t kPackRows = 4096;
// Input channels per weight slice: one [kInputBlock, Chunk] slice of float32 is 16 KB, so it stays in L1.
constexpr int64_t kWideSliceBytes = 16 * 1024;

template <int Vectors, typename acc_t>
inline __attribute__((always_inline)) void accumulate_row_quad(const acc_t* const* x, const acc_t* w,
                                                               int64_t in_channels, int64_t stride,
                                                               Vector<acc_t> (*acc)[Vectors]) {
  for (int64_t i = 0; i < in_channels; ++i) {
    const acc_t v0 = x[0][i], v1 = x[1][i], v2 = x[2][i], v3 = x[3][i];
    const acc_t* w_row = w + i * stride;
    for (int c = 0; c < Vectors; ++c) {
      const Vector<acc_t> weights = load_vector(w_row + c * kLanes<acc_t>);
      acc[0][c] += v0 * weights;
      acc[1][c] += v1 * weights;
      acc[2][c] += v2 * weights;
      acc[3][c] += v3 * weights;
    }
  }
}

template <int Chunk, typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void convolve_row_blocks(const scalar_t* features, const acc_t* weight, const int32_t* neighbors,
                                          scalar_t* out, const ConvShape* shape, bool packed,
                                          int64_t first_block, int64_t last_block) {
  const int64_t taps = shape->taps, in_channels = shape->in_channels, out_channels = shape->out_channels;
  const int64_t chunks = out_channels / Chunk;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  constexpr int kVectors = Chunk / kLanes<acc_t>;
  const int64_t input_block = packed ? kWideSliceBytes / (Chunk * int64_t(sizeof(acc_t))) : in_channels;
  const int64_t stride = packed ? Chunk : out_channels;   // packed weight: [taps][out / Chunk][in][Chunk]
  std::vector<acc_t> acc(kWideRowBlock * out_channels);
  std::vector<acc_t> converted(convert ? kWideRowBlock * in_channels : 0);
  for (int64_t block = first_block; block < last_block; ++block) {
    const int64_t first = block * kWideRowBlock, rows = std::min(shape->outputs, first + kWideRowBlock) - first;
    std::fill(acc.begin(), acc.begin() + rows * out_channels, acc_t(0));
    for (int64_t k = 0; k < taps; ++k) {
      int count = 0;
      int row[kWideRowBlock];
      const acc_t* x[kWideRowBlock];
      for (int r = 0; r < rows; ++r) {
        const int32_t n = neighbors[(first + r) * taps + k];
        if (n < 0) continue;
        const scalar_t* source = features + int64_t(n) * in_channels;
        if constexpr (convert) {
          acc_t* target = converted.data() + count * in_channels;
          for (int64_t i = 0; i < in_channels; ++i) target[i] = static_cast<acc_t>(source[i]);
          x[count] = target;
        } else {
          x[count] = source;
        }
        row[count++] = r;
      }
      if (count == 0) continue;
      for (int64_t c = 0; c < chunks; ++c) {
        const acc_t* w_chunk = packed ? weight + (k * chunks + c) * in_channels * Chunk
                                      : weight + k * in_channels * out_channels + c * Chunk;
        for (int64_t i0 = 0; i0 < in_channels; i0 += input_block) {
          const int64_t width = std::min(input_block, in_channels - i0);
          const acc_t* w = w_chunk + i0 * stride;
          int start = 0;
          for (; start + 4 <= count; start += 4) {
            Vector<acc_t> a[4][kVectors];
            const acc_t* xs[4];
            for (int q = 0; q < 4; ++q) {
              const acc_t* source = acc.data() + row[start + q] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) a[q][v] = load_vector(source + v * kLanes<acc_t>);
              xs[q] = x[start + q] + i0;
            }
            accumulate_row_quad<kVectors>(xs, w, width, stride, a);
            for (int q = 0; q < 4; ++q) {
              acc_t* target = acc.data() + row[start + q] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) std::memcpy(target + v * kLanes<acc_t>, &a[q][v], sizeof(a[q][v]));
            }
          }
          for (; start < count; start += 2) {
            Vector<acc_t> a0[kVectors], a1[kVectors];
            acc_t* t0 = acc.data() + row[start] * out_channels + c * Chunk;
            for (int v = 0; v < kVectors; ++v) a0[v] = load_vector(t0 + v * kLanes<acc_t>);
            if (start + 1 < count) {
              acc_t* t1 = acc.data() + row[start + 1] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) a1[v] = load_vector(t1 + v * kLanes<acc_t>);
              accumulate_row_pair<kVectors>(x[start] + i0, x[start + 1] + i0, w, width, stride, a0, a1);
              for (int v = 0; v < kVectors; ++v) std::memcpy(t1 + v * kLanes<acc_t>, &a1[v], sizeof(a1[v]));
            } else {
              accumulate_row<kVectors>(x[start] + i0, w, width, stride, a0);
            }
            for (int v = 0; v < kVectors; ++v) std::memcpy(t0 + v * kLanes<acc_t>, &a0[v], sizeof(a0[v]));
          }
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const acc_t* source = acc.data() + r * out_channels;
      scalar_t* target = out + (first + r) * out_channels;
      for (int64_t o = 0; o < out_channels; ++o) target[o] = static_cast<scalar_t>(source[o]);
    }
  }
}

// The blocked path pays off once the weight is over about a quarter of L2 (measured on Zen 4: faster from
// 64 x 64 channels with 27 taps on, slower at 32 x 32); chosen by shape alone.
constexpr int64_t kWideWeightBytes = 256 * 1024;

template <typename acc_t>
bool use_row_blocks(const ConvShape& shape) {
  return shape.taps * shape.in_channels * shape.out_channels * int64_t(sizeof(acc_t)) > kWideWeightBytes;
}

ConvShape conv_shape(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                     int64_t groups) {
  return ConvShape{neighbors.size(0), neighbors.size(1), features.size(1), weight.size(2), groups,
                   weight.size(1), weight.size(2) / groups};
}

at::Tensor sparse_conv_cpu(const at::Tensor& features_in, const at::Tensor& weight_in,
                           const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors, int64_t groups) {
  check_conv_arguments(features_in, weight_in, neighbors_in, groups);
  const at::Tensor features = features_in.contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  check_neighbor_range(neighbors, features.size(0), "sparse_conv");
  const ConvShape shape = conv_shape(features, weight_in, neighbors, groups);
  at::Tensor out = at::empty({shape.outputs, shape.out_channels}, features.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weight = weight_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const scalar_t* x = features.data_ptr<scalar_t>();
    const acc_t* w = weight.data_ptr<acc_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    auto in_registers = [&](auto kernel) {
      at::parallel_for(0, (shape.outputs + 1) / 2, kRowBlock / 2, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, begin, end);
      });
    };
    auto in_row_blocks = [&](auto kernel, int64_t chunk) {
      // With enough rows, the weight repacked as [taps][out / chunk][in][chunk]: each (tap, chunk) slice contiguous.
      const bool pack = shape.outputs >= kPackRows;
      at::Tensor packed = weight;
      if (pack) {
        packed = at::empty_like(weight);
        const acc_t* source = weight.data_ptr<acc_t>();
        acc_t* target = packed.data_ptr<acc_t>();
        const int64_t chunks = shape.out_channels / chunk, in_channels = shape.in_channels;
        at::parallel_for(0, shape.taps * in_channels, 64, [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {   // row = k * in + i
            const int64_t k = row / in_channels, i = row % in_channels;
            for (int64_t c = 0; c < chunks; ++c) {
              std::memcpy(target + ((k * chunks + c) * in_channels + i) * chunk,
                          source + row * shape.out_channels + c * chunk, chunk * sizeof(acc_t));
            }
          }
        });
      }
      const acc_t* p = packed.data_ptr<acc_t>();
      at::parallel_for(0, at::divup(shape.outputs, kWideRowBlock), 1, [&](int64_t begin, int64_t end) {
        kernel(x, p, map, y, &shape, pack, begin, end);
      });
    };
    const bool wide = groups == 1 && shape.out_channels % 16 == 0 && use_row_blocks<acc_t>(shape);
    if (wide && shape.out_channels % 64 == 0) {
      in_row_blocks(convolve_row_blocks<64, scalar_t, acc_t>, 64);
    } else if (wide && shape.out_channels % 32 == 0) {
      in_row_blocks(convolve_row_blocks<32, scalar_t, acc_t>, 32);
    } else if (wide) {
      in_row_blocks(convolve_row_blocks<16, scalar_t, acc_t>, 16);
    } else if (groups == 1 && shape.out_channels % 64 == 0) {
      in_registers(convolve_rows_in_registers<64, scalar_t, acc_t>);
    } else if (groups == 1 && shape.out_channels % 32 == 0) {
      in_registers(convolve_rows_in_registers<32, scalar_t, acc_t>);
    } else if (groups == 1 && shape.out_channels % 16 == 0) {
      in_registers(convolve_rows_in_registers<16, scalar_t, acc_t>);
    } else {
      const int64_t blocks = (shape.outputs + kRowBlock - 1) / kRowBlock;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        convolve_range<scalar_t, acc_t>(x, w, map, y, &shape, begin, end);
      });
    }
  });
  return out;
}

// Per tap, the (output row, input row) pairs of the kernel map in output-row order (CSR by tap).
struct PairsByTap {
  std::vector<int64_t> offsets;  // taps + 1
  std::vector<int32_t> outputs, inputs;

  PairsByTap(const int32_t* neighbors, int64_t rows, int64_t taps) : offsets(taps + 1, 0) {
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t k = 0; k < taps; ++k) offsets[k + 1] += neighbors[m * taps + k] >= 0;
    }
    for (int64_t k = 0; k < taps; ++k) offsets[k + 1] += offsets[k];
    outputs.resize(offsets[taps]);
    inputs.resize(offsets[taps]);
    std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t k = 0; k < taps; ++k) {
        const int32_t n = neighbors[m * taps + k];
        if (n < 0) continue;
        outputs[cursor[k]] = static_cast<int32_t>(m);
        inputs[cursor[k]++] = n;
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void weight_grad_range(const scalar_t* features, const scalar_t* grad_output,
                                        const PairsByTap* pairs, acc_t* grad_weight, const ConvShape* shape,
                                        int64_t channel_blocks, int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    const int64_t k = task / channel_blocks;
    const int64_t i_begin = (task % channel_blocks) * kChannelBlock;
    const int64_t i_end = std::min(shape->in_per_group, i_begin + kChannelBlock);
    acc_t* dw = grad_weight + k * shape->in_per_group * shape->out_channels;
    for (int64_t p = pairs->offsets[k]; p < pairs->offsets[k + 1]; ++p) {
      const scalar_t* x = features + int64_t(pairs->inputs[p]) * shape->in_channels;
      const scalar_t* dy = grad_output + int64_t(pairs->outputs[p]) * shape->out_channels;
      for (int64_t g = 0; g < shape->groups; ++g) {
        const int64_t o0 = g * shape->out_per_group, o1 = o0 + shape->out_per_group;
        for (int64_t i = i_begin; i < i_end; ++i) {
          const acc_t v = static_cast<acc_t>(x[g * shape->in_per_group + i]);
          acc_t* row = dw + i * shape->out_channels;
          for (int64_t o = o0; o < o1; ++o) row[o] += v * static_cast<acc_t>(dy[o]);
        }
      }
    }
  }
}

// groups == 1 and out_channels a multiple of Chunk: one task per (tap, group of up to kGroupWidth output
// channels; single Chunks for taps < 4, so kernel-1 layers still split). The tap's pairs are walked in tiles of
// kTile: their input rows are gathered once for the whole group, in groups of 4 channels ([channel / 4][pair][4], so
// a register block reads them sequentially), and their gradient rows per Chunk ([chunk][pair][Chunk], contiguous);
// the next tile's rows are prefetched meanwhile. For every 4 input channels the 4 x Chunk block of the tap's gradient
// is held in registers over the tile, loaded from and stored to grad_weight itself (zero before the first tile).
// Each element sums the pairs in list order, and every element is written, so results are deterministic whatever
// the split and grad_weight needs no zero fill.
constexpr int64_t kGroupWidth = 256;

template <int Chunk, typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void weight_grad_in_registers(const scalar_t* features, const scalar_t* grad_output,
                                               const PairsByTap* pairs, acc_t* grad_weight, const ConvShape* shape,
                                               int64_t group_chunks, int64_t begin, int64_t end) {
  constexpr int kInputs = 4, kTile = 64;
  constexpr int kVectors = Chunk / kLanes<acc_t>;
  const int64_t in_channels = shape->in_channels, out_channels = shape->out_channels;
  const int64_t padded_inputs = (in_channels + kInputs - 1) / kInputs * kInputs;
  const int64_t chunks = out_channels / Chunk, groups_per_tap = (chunks + group_chunks - 1) / group_chunks;
  std::vector<acc_t> inputs_tile(padded_inputs * kTile, acc_t(0));
  std::vector<acc_t> gradients_tile(group_chunks * kTile * Chunk);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t k = task / groups_per_tap, c0 = task % groups_per_tap * group_chunks;
    const int64_t group = std::min(group_chunks, chunks - c0);
    acc_t* dw = grad_weight + k * in_channels * out_channels + c0 * Chunk;
    const int64_t tap_begin = pairs->offsets[k], tap_end = pairs->offsets[k + 1];
    if (tap_begin == tap_end) {
      for (int64_t i = 0; i < in_channels; ++i) {
        std::fill(dw + i * out_channels, dw + i * out_channels + group * Chunk, acc_t(0));
      }
      continue;
    }
    for (int64_t first = tap_begin; first < tap_end; first += kTile) {
      const int tile = static_cast<int>(std::min<int64_t>(kTile, tap_end - first));
      for (int t = 0; t < tile; ++t) {
        const scalar_t* x = features + int64_t(pairs->inputs[first + t]) * in_channels;
        const scalar_t* dy = grad_output + int64_t(pairs->outputs[first + t]) * out_channels + c0 * Chunk;
        int64_t i0 = 0;   // kInputs channels at a time (GCC would vectorize an element loop into scatters)
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          for (; i0 + kInputs <= in_channels; i0 += kInputs) {
            std::memcpy(&inputs_tile[i0 * kTile + t * kInputs], x + i0, kInputs * sizeof(acc_t));
          }
        }
        for (; i0 < in_channels; i0 += kInputs) {
          acc_t values[kInputs] = {};
          for (int r = 0; r < kInputs && i0 + r < in_channels; ++r) values[r] = static_cast<acc_t>(x[i0 + r]);
          std::memcpy(&inputs_tile[i0 * kTile + t * kInputs], values, sizeof(values));
        }
        for (int64_t c = 0; c < group; ++c) {
          for (int j = 0; j < Chunk; ++j) {
            gradients_tile[(c * kTile + t) * Chunk + j] = static_cast<acc_t>(dy[c * Chunk + j]);
          }
        }
      }
      const int64_t next_end = std::min(tap_end, first + 2 * kTile);
      for (int64_t q = first + kTile; q < next_end; ++q) {
        const char* x = reinterpret_cast<const char*>(features + int64_t(pairs->inputs[q]) * in_channels);
        const char* dy = reinterpret_cast<const char*>(grad_output + int64_t(pairs->outputs[q]) * out_channels +
                                                       c0 * Chunk);
        for (int64_t b = 0; b < in_channels * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(x + b);
        for (int64_t b = 0; b < group * Chunk * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(dy + b);
      }
      for (int64_t c = 0; c < group; ++c) {
        const acc_t* gradients = gradients_tile.data() + c * kTile * Chunk;
        for (int64_t i0 = 0; i0 < padded_inputs; i0 += kInputs) {
          const int valid = static_cast<int>(std::min<int64_t>(kInputs, in_channels - i0));
          acc_t* target = dw + i0 * out_channels + c * Chunk;
          Vector<acc_t> acc[kInputs][kVectors] = {};
          if (first != tap_begin) {
            for (int r = 0; r < valid; ++r) {
              for (int v = 0; v < kVectors; ++v) acc[r][v] = load_vector(target + r * out_channels + v * kLanes<acc_t>);
            }
          }
          const acc_t* x = inputs_tile.data() + i0 * kTile;   // [pair][kInputs]
          for (int t = 0; t < tile; ++t) {
            Vector<acc_t> dy[kVectors];
            for (int v = 0; v < kVectors; ++v) dy[v] = load_vector(&gradients[t * Chunk + v * kLanes<acc_t>]);
            for (int r = 0; r < kInputs; ++r) {
              for (int v = 0; v < kVectors; ++v) acc[r][v] += x[t * kInputs + r] * dy[v];
            }
          }
          for (int r = 0; r < valid; ++r) {
            for (int v = 0; v < kVectors; ++v) {
              std::memcpy(target + r * out_channels + v * kLanes<acc_t>, &acc[r][v], sizeof(acc[r][v]));
            }
          }
        }
      }
    }
  }
}

at::Tensor sparse_conv_weight_grad_cpu(const at::Tensor& features_in, const at::Tensor& grad_output_in,
                                       const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors,
                                       int64_t groups) {
  check_weight_grad_arguments(features_in, grad_output_in, neighbors_in, groups);
  const at::Tensor features = features_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(features.scalar_type()).contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  check_neighbor_range(neighbors, features.size(0), "sparse_conv_weight_grad");
  const int64_t taps = neighbors.size(1), in_per_group = features.size(1) / groups;
  const ConvShape shape{neighbors.size(0), taps, features.size(1), grad_output.size(1), groups, in_per_group,
                        grad_output.size(1) / groups};
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_wgrad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool in_registers = groups == 1 && shape.out_channels % 16 == 0;
    const auto options = features.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    // The register-blocked path writes every element itself.
    const std::vector<int64_t> sizes{taps, in_per_group, shape.out_channels};
    at::Tensor grad_weight = in_registers && in_per_group > 0 ? at::empty(sizes, options) : at::zeros(sizes, options);
    const int64_t channel_blocks = std::max<int64_t>(1, (in_per_group + kChannelBlock - 1) / kChannelBlock);
    if (in_per_group > 0) {
      const PairsByTap pairs(neighbors.data_ptr<int32_t>(), shape.outputs, taps);
      const scalar_t* x = features.data_ptr<scalar_t>();
      const scalar_t* dy = grad_output.data_ptr<scalar_t>();
      acc_t* dw = grad_weight.data_ptr<acc_t>();
      auto run = [&](auto kernel, int64_t chunk) {
        const int64_t chunks = shape.out_channels / chunk;
        const int64_t group_chunks = taps < 4 ? 1 : std::max<int64_t>(1, std::min(chunks, kGroupWidth / chunk));
        const int64_t tasks = taps * ((chunks + group_chunks - 1) / group_chunks);
        at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
          kernel(x, dy, &pairs, dw, &shape, group_chunks, begin, end);
        });
      };
      if (in_registers && shape.out_channels % 64 == 0) {
        run(weight_grad_in_registers<64, scalar_t, acc_t>, 64);
      } else if (in_registers && shape.out_channels % 32 == 0) {
        run(weight_grad_in_registers<32, scalar_t, acc_t>, 32);
      } else if (in_registers) {
        run(weight_grad_in_registers<16, scalar_t, acc_t>, 16);
      } else {
        at::parallel_for(0, taps * channel_blocks, 1, [&](int64_t begin, int64_t end) {
          weight_grad_range<scalar_t, acc_t>(x, dy, &pairs, dw, &shape, channel_blocks, begin, end);
        });
      }
    }
    result = grad_weight.to(features.scalar_type());
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsevision, CPU, m) {
  m.impl("sparse_conv", &sparse_conv_cpu);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cpu);
}

}  // namespace sparsevision
