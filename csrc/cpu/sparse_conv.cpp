// CPU kernels of sparsevision::sparse_conv and sparsevision::sparse_conv_weight_grad.
//
// sparse_conv (output-stationary): out[m, o] = sum over taps k and input channels i of o's group of
//   features[neighbors[m, k], i] * weight[k, i_local, o]. Every output row is summed by one thread in an order fixed
//   by the shape, so results are bitwise identical at any thread count. Four paths, chosen by shape alone:
//   - groups == 1 with at most 8 outputs: each output a dot product along the input channels
//     (convolve_narrow_outputs);
//   - other groups == 1 layers add taps, then input channels, in order: fixed row pairs' accumulators in vector
//     registers (convolve_rows_in_registers), or, when the weight is larger than about a quarter of L2, fixed blocks
//     of output rows (sized to stay in L2) walked tap by tap so each packed weight slice serves the whole block, four
//     rows at a time (convolve_row_blocks; the same per-row sums, bit for bit); out_channels not a multiple of 16 are
//     padded with zero weight columns to one;
//   - grouped layers: rows in blocks, the rows that have tap k four at a time (convolve_range).
//   The weight may have any strides: it is packed once per call (pack_weight), which also replaces the layers' layout
//   copies.
//
// sparse_conv_weight_grad: grad_weight[k, i_local, o] = sum over m (in order) of
//   features[neighbors[m, k], i] * grad_output[m, o]; the map is first regrouped into per-tap pair lists, then
//   tasks walk them (register-blocked tiles in blocks of output rows when groups == 1, with output-gradient columns
//   zero-padded to a multiple of 16, else one task per (tap, input-channel block)).
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
#include <memory>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../registration.h"
#include "../sparse_conv.h"
#include "recycled_buffers.h"
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

// groups == 1 and at most kNarrowOutputs outputs (a stem's input gradient: 32 -> 4 channels over 125 taps). Padded
// to 16 outputs, most of the work would be zeros and each row one latency-bound chain; here each output is a dot
// product along the input channels instead. A row's present taps are listed first (list_present_taps); each tap then
// adds, for every output, input-channel vectors times weight vectors into two accumulators (even and odd vectors),
// which are added at the row's end and their lanes summed in order. The weight comes packed as
// [taps][Outputs][input channels rounded up to whole vectors], zero-padded (pack_weight_by_output); input rows are
// read in place when they are whole vectors of acc_t, else copied into a zero-padded buffer. The order depends on the
// shape only, and each row is summed by one thread, so results are the same at any thread count.
template <int Outputs, typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void convolve_narrow_outputs(const scalar_t* features, const acc_t* weight, const int32_t* neighbors,
                                              scalar_t* out, const ConvShape* shape, int64_t first, int64_t last) {
  constexpr int kWidth = kLanes<acc_t>;
  const int64_t taps = shape->taps, in_channels = shape->in_channels, out_channels = shape->out_channels;
  const int64_t vectors = at::divup(in_channels, int64_t(kWidth)), padded = vectors * kWidth;
  const bool in_place = std::is_same_v<scalar_t, acc_t> && in_channels % kWidth == 0;
  std::vector<acc_t> row_copy(in_place ? 0 : padded, acc_t(0));
  std::vector<int64_t> present(taps);
  for (int64_t m = first; m < last; ++m) {
    const int32_t* row = neighbors + m * taps;
    const int64_t count = list_present_taps(row, taps, present.data());
    Vector<acc_t> even[Outputs] = {}, odd[Outputs] = {};
    for (int64_t p = 0; p < count; ++p) {
      const int64_t k = present[p];
      const scalar_t* source = features + int64_t(row[k]) * in_channels;
      const acc_t* x;
      if (in_place) {
        x = reinterpret_cast<const acc_t*>(source);
      } else {
        for (int64_t i = 0; i < in_channels; ++i) row_copy[i] = static_cast<acc_t>(source[i]);
        x = row_copy.data();
      }
      const acc_t* w = weight + k * Outputs * padded;
      int64_t v = 0;
      for (; v + 2 <= vectors; v += 2) {
        const Vector<acc_t> x0 = load_vector(x + v * kWidth), x1 = load_vector(x + (v + 1) * kWidth);
        for (int o = 0; o < Outputs; ++o) {
          even[o] += x0 * load_vector(w + o * padded + v * kWidth);
          odd[o] += x1 * load_vector(w + o * padded + (v + 1) * kWidth);
        }
      }
      if (v < vectors) {
        const Vector<acc_t> x0 = load_vector(x + v * kWidth);
        for (int o = 0; o < Outputs; ++o) even[o] += x0 * load_vector(w + o * padded + v * kWidth);
      }
    }
    for (int o = 0; o < std::min<int64_t>(Outputs, out_channels); ++o) {
      const Vector<acc_t> total = even[o] + odd[o];
      acc_t sum = total[0];
      for (int j = 1; j < kWidth; ++j) sum += total[j];
      out[m * out_channels + o] = static_cast<scalar_t>(sum);
    }
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
// convolve_rows_in_registers, in another loop order. Fixed blocks of output rows (RowBlocks) keep their accumulators
// in a buffer that stays in L2; for each tap k and Chunk output channels, the weight slice serves every row of the
// block that has tap k, four rows at a time (so each weight vector is loaded once for four rows). The weight comes
// packed as [taps][out / Chunk][in][Chunk] (pack_weight), read in slices of up to kWideSliceBytes. Each row still
// adds taps in order and, within a tap, input channels in order, one multiply-add per channel as in the other path
// (the accumulators are stored and reloaded exactly between input-channel slices, and rows never mix), so results
// are bitwise identical to it whatever rows are grouped together.
// Weight slice bytes: 256 input channels x 64 outputs of float32, read from L2. On Zen 4 this beat 16 KB slices held
// in L1 (one accumulator load and store per four rows every 256 input channels instead of every 64).
constexpr int64_t kWideSliceBytes = 64 * 1024;
// Accumulator bytes per row block (kept in L2 with the gathered rows); at least kMinBlockRows rows per block.
constexpr int64_t kBlockBytes = 384 * 1024;
constexpr int64_t kMinBlockRows = 64;

// Output rows split into `count` blocks of `rows` (the last may be shorter): as few blocks as the accumulator budget
// allows, but at least one per thread while blocks keep kMinBlockRows rows.
struct RowBlocks {
  int64_t rows, count;

  RowBlocks(int64_t outputs, int64_t out_channels, int64_t element_bytes) {
    const int64_t budget_rows = std::max(kMinBlockRows, kBlockBytes / (out_channels * element_bytes));
    const int64_t wanted = std::max(at::divup(outputs, budget_rows),
                                    std::min<int64_t>(at::get_num_threads(), at::divup(outputs, kMinBlockRows)));
    rows = at::divup(outputs, std::max<int64_t>(1, wanted));
    count = at::divup(outputs, rows);
  }
};

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
                                          scalar_t* out, const ConvShape* shape, int64_t block_rows,
                                          int64_t first_block, int64_t last_block) {
  const int64_t taps = shape->taps, in_channels = shape->in_channels, out_channels = shape->out_channels;
  const int64_t chunks = out_channels / Chunk;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  constexpr int kVectors = Chunk / kLanes<acc_t>;
  const int64_t input_block = kWideSliceBytes / (Chunk * int64_t(sizeof(acc_t)));
  std::vector<acc_t> acc(block_rows * out_channels);
  std::vector<acc_t> converted(convert ? block_rows * in_channels : 0);
  std::vector<int> row(block_rows);
  std::vector<const acc_t*> x(block_rows);
  for (int64_t block = first_block; block < last_block; ++block) {
    const int64_t first = block * block_rows, rows = std::min(shape->outputs, first + block_rows) - first;
    std::fill(acc.begin(), acc.begin() + rows * out_channels, acc_t(0));
    for (int64_t k = 0; k < taps; ++k) {
      int count = 0;
      for (int r = 0; r < rows; ++r) {
        const int32_t n = neighbors[(first + r) * taps + k];
        if constexpr (convert) {
          if (n < 0) continue;
          const scalar_t* source = features + int64_t(n) * in_channels;
          acc_t* target = converted.data() + count * in_channels;
          for (int64_t i = 0; i < in_channels; ++i) target[i] = static_cast<acc_t>(source[i]);
          x[count] = target;
          row[count++] = r;
        } else {   // without branches: which rows have tap k is unpredictable
          x[count] = features + int64_t(std::max(n, 0)) * in_channels;
          row[count] = r;
          count += n >= 0;
        }
      }
      if (count == 0) continue;
      for (int64_t c = 0; c < chunks; ++c) {
        const acc_t* w_chunk = weight + (k * chunks + c) * in_channels * Chunk;
        for (int64_t i0 = 0; i0 < in_channels; i0 += input_block) {
          const int64_t width = std::min(input_block, in_channels - i0);
          const acc_t* w = w_chunk + i0 * Chunk;
          int start = 0;
          for (; start + 4 <= count; start += 4) {
            Vector<acc_t> a[4][kVectors];
            const acc_t* xs[4];
            for (int q = 0; q < 4; ++q) {
              const acc_t* source = acc.data() + row[start + q] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) a[q][v] = load_vector(source + v * kLanes<acc_t>);
              xs[q] = x[start + q] + i0;
            }
            accumulate_row_quad<kVectors>(xs, w, width, Chunk, a);
            for (int q = 0; q < 4; ++q) {
              acc_t* target = acc.data() + row[start + q] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) store_vector(target + v * kLanes<acc_t>, a[q][v]);
            }
          }
          for (; start < count; start += 2) {
            Vector<acc_t> a0[kVectors], a1[kVectors];
            acc_t* t0 = acc.data() + row[start] * out_channels + c * Chunk;
            for (int v = 0; v < kVectors; ++v) a0[v] = load_vector(t0 + v * kLanes<acc_t>);
            if (start + 1 < count) {
              acc_t* t1 = acc.data() + row[start + 1] * out_channels + c * Chunk;
              for (int v = 0; v < kVectors; ++v) a1[v] = load_vector(t1 + v * kLanes<acc_t>);
              accumulate_row_pair<kVectors>(x[start] + i0, x[start + 1] + i0, w, width, Chunk, a0, a1);
              for (int v = 0; v < kVectors; ++v) store_vector(t1 + v * kLanes<acc_t>, a1[v]);
            } else {
              accumulate_row<kVectors>(x[start] + i0, w, width, Chunk, a0);
            }
            for (int v = 0; v < kVectors; ++v) store_vector(t0 + v * kLanes<acc_t>, a0[v]);
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

// Kernel-1 layers (shortcut projections) always take it: every row has its one tap, so each weight vector loaded
// serves four rows instead of two (measured 12-45 % faster; 96 -> 128 channels at 115k sites: 41 -> 34 ms).
template <typename acc_t>
bool use_row_blocks(const ConvShape& shape) {
  const int64_t weight_bytes = shape.taps * shape.in_channels * shape.out_channels * int64_t(sizeof(acc_t));
  return shape.taps == 1 || weight_bytes > kWideWeightBytes;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SV_AVX512_TRANSPOSE 1
// GCC 12's intrinsics start some results from _mm512_undefined_*, which -Wuninitialized reports falsely.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// to[j * to_stride + i] = from[i * from_stride + j] for a 16 x 16 block of floats, in AVX-512 registers: pairs of
// rows interleaved as 32-, 64-, then 128-bit and 256-bit lanes.
__attribute__((target("avx512f"))) void transpose_16x16(const float* from, int64_t from_stride, float* to,
                                                         int64_t to_stride) {
  __m512 rows[16], mixed[16];
  for (int r = 0; r < 16; ++r) rows[r] = _mm512_loadu_ps(from + r * from_stride);
  for (int r = 0; r < 16; r += 2) {
    mixed[r] = _mm512_unpacklo_ps(rows[r], rows[r + 1]);
    mixed[r + 1] = _mm512_unpackhi_ps(rows[r], rows[r + 1]);
  }
  for (int r = 0; r < 16; r += 4) {
    for (int h = 0; h < 2; ++h) {
      const __m512d low = _mm512_castps_pd(mixed[r + h]), high = _mm512_castps_pd(mixed[r + h + 2]);
      rows[r + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(low, high));
      rows[r + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(low, high));
    }
  }
  for (int r = 0; r < 16; r += 8) {
    for (int q = 0; q < 4; ++q) {
      mixed[r + q] = _mm512_shuffle_f32x4(rows[r + q], rows[r + q + 4], 0x88);
      mixed[r + q + 4] = _mm512_shuffle_f32x4(rows[r + q], rows[r + q + 4], 0xdd);
    }
  }
  for (int q = 0; q < 8; ++q) {
    _mm512_storeu_ps(to + q * to_stride, _mm512_shuffle_f32x4(mixed[q], mixed[q + 8], 0x88));
    _mm512_storeu_ps(to + (q + 8) * to_stride, _mm512_shuffle_f32x4(mixed[q], mixed[q + 8], 0xdd));
  }
}
#pragma GCC diagnostic pop
#endif

// weight[k, i, c * chunk + j] (a [taps, in, out] tensor of any strides) -> target[((k * chunks + c) * in + i) *
// chunk + j] as acc_t: [taps][out / chunk][in][chunk], which is plain [taps][in][out] for chunk = out. This replaces a
// separate contiguous() copy. A view with contiguous input channels (the layers' view of spconv's [out, taps, in]
// weight) is transposed in 16 x 16 tiles (in AVX-512 registers for float32 where the CPU has it), anything else
// element by element in 8 x 8 tiles.
template <typename scalar_t, typename acc_t>
void pack_weight(const at::Tensor& weight, int64_t chunk, acc_t* target) {
  constexpr int kTile = 8, kWideTile = 16;
  const int64_t taps = weight.size(0), in_channels = weight.size(1), out_channels = weight.size(2);
  const int64_t chunks = out_channels / chunk;
  const int64_t tap_stride = weight.stride(0), in_stride = weight.stride(1), out_stride = weight.stride(2);
  const scalar_t* source = weight.data_ptr<scalar_t>();
  bool registers = false;
#ifdef SV_AVX512_TRANSPOSE
  registers = std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float> && in_stride == 1 &&
              __builtin_cpu_supports("avx512f");
#endif
  at::parallel_for(0, taps * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slice_index = begin; slice_index < end; ++slice_index) {
      const int64_t k = slice_index / chunks, c = slice_index % chunks;
      acc_t* slice = target + slice_index * in_channels * chunk;
      const scalar_t* weights = source + k * tap_stride + c * chunk * out_stride;
      if (out_stride == 1) {
        for (int64_t i = 0; i < in_channels; ++i) {
          for (int64_t j = 0; j < chunk; ++j) slice[i * chunk + j] = static_cast<acc_t>(weights[i * in_stride + j]);
        }
        continue;
      }
      const int64_t tile = registers ? kWideTile : kTile;
      for (int64_t i0 = 0; i0 < in_channels; i0 += tile) {
        for (int64_t j0 = 0; j0 < chunk; j0 += tile) {
          const bool whole = i0 + tile <= in_channels && j0 + tile <= chunk;
#ifdef SV_AVX512_TRANSPOSE
          if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
            if (registers && whole) {
              transpose_16x16(weights + j0 * out_stride + i0, out_stride, slice + i0 * chunk + j0, chunk);
              continue;
            }
          }
#endif
          if (in_stride == 1 && whole && tile == kTile) {   // fixed bounds: loads along i, stores along j
            acc_t block[kTile][kTile];
            for (int j = 0; j < kTile; ++j) {
              for (int i = 0; i < kTile; ++i) block[i][j] = static_cast<acc_t>(weights[(j0 + j) * out_stride + i0 + i]);
            }
            for (int i = 0; i < kTile; ++i) std::memcpy(slice + (i0 + i) * chunk + j0, block[i], sizeof(block[i]));
            continue;
          }
          for (int64_t i = i0; i < std::min(in_channels, i0 + tile); ++i) {
            for (int64_t j = j0; j < std::min(chunk, j0 + tile); ++j) {
              slice[i * chunk + j] = static_cast<acc_t>(weights[j * out_stride + i * in_stride]);
            }
          }
        }
      }
    }
  });
}

// weight[k, i, o] (a [taps, in, out] tensor of any strides) -> target[(k * outputs + o) * padded + i] as acc_t, zero
// for o >= out and i >= in: the layout of convolve_narrow_outputs.
template <typename scalar_t, typename acc_t>
void pack_weight_by_output(const at::Tensor& weight, int64_t outputs, int64_t padded, acc_t* target) {
  const int64_t taps = weight.size(0), in_channels = weight.size(1), out_channels = weight.size(2);
  const int64_t tap_stride = weight.stride(0), in_stride = weight.stride(1), out_stride = weight.stride(2);
  const scalar_t* source = weight.data_ptr<scalar_t>();
  std::fill(target, target + taps * outputs * padded, acc_t(0));
  for (int64_t k = 0; k < taps; ++k) {
    for (int64_t o = 0; o < out_channels; ++o) {
      for (int64_t i = 0; i < in_channels; ++i) {
        target[(k * outputs + o) * padded + i] =
            static_cast<acc_t>(source[k * tap_stride + i * in_stride + o * out_stride]);
      }
    }
  }
}

// The calling thread's buffer for packed weights, reused from call to call: a fresh allocation of a few MB would be
// paid again in page faults on every call.
template <typename acc_t>
acc_t* packing_buffer(int64_t elements) {
  thread_local std::vector<acc_t> buffer;
  if (int64_t(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

// `tensor` with its output-channel dimension `dim` zero-padded to a multiple of 16. Layers with such outputs run on a
// register-blocked path (many times faster than the generic one, e.g. for a 24-channel layer, or the weight gradient
// of a stem's input gradient); the real outputs' sums, and their order, are unchanged, and the caller keeps only those.
at::Tensor padded_outputs(const at::Tensor& tensor, int64_t dim) {
  std::vector<int64_t> sizes = tensor.sizes().vec();
  sizes[dim] = at::divup(sizes[dim], 16) * 16;
  at::Tensor padded = at::zeros(sizes, tensor.options());
  padded.narrow(dim, 0, tensor.size(dim)).copy_(tensor);
  return padded;
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
  if (shape.outputs * shape.out_channels == 0) {
    return at::empty({shape.outputs, shape.out_channels}, features.options());
  }
  if (groups == 1 && shape.out_channels > kNarrowOutputs && shape.out_channels % 16 != 0) {   // see padded_outputs
    return sparse_conv_cpu(features, padded_outputs(weight_in, 2), neighbors, inverse_neighbors, 1)
        .narrow(1, 0, shape.out_channels)
        .contiguous();
  }
  at::Tensor out = empty_recycled({shape.outputs, shape.out_channels}, features.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    auto packed_weight = [&](int64_t chunk) -> const acc_t* {
      if (chunk == shape.out_channels && std::is_same_v<scalar_t, acc_t> && weight_in.is_contiguous()) {
        return reinterpret_cast<const acc_t*>(weight_in.data_ptr<scalar_t>());
      }
      acc_t* packed = packing_buffer<acc_t>(weight_in.numel());
      pack_weight<scalar_t, acc_t>(weight_in, chunk, packed);
      return packed;
    };
    auto in_registers = [&](auto kernel) {
      const acc_t* w = packed_weight(shape.out_channels);
      at::parallel_for(0, (shape.outputs + 1) / 2, kRowBlock / 2, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, begin, end);
      });
    };
    auto in_row_blocks = [&](auto kernel, int64_t chunk) {
      const acc_t* w = packed_weight(chunk);
      const RowBlocks blocks(shape.outputs, shape.out_channels, sizeof(acc_t));
      at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, blocks.rows, begin, end);
      });
    };
    auto narrow = [&](auto kernel, int64_t outputs) {
      const int64_t padded = at::divup(shape.in_channels, int64_t(kLanes<acc_t>)) * kLanes<acc_t>;
      acc_t* w = packing_buffer<acc_t>(shape.taps * outputs * padded);
      pack_weight_by_output<scalar_t, acc_t>(weight_in, outputs, padded, w);
      at::parallel_for(0, shape.outputs, kRowBlock, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, begin, end);
      });
    };
    const bool wide = groups == 1 && shape.out_channels % 16 == 0 && use_row_blocks<acc_t>(shape);
    if (groups == 1 && shape.out_channels <= 4) {
      narrow(convolve_narrow_outputs<4, scalar_t, acc_t>, 4);
    } else if (groups == 1 && shape.out_channels <= kNarrowOutputs) {
      narrow(convolve_narrow_outputs<kNarrowOutputs, scalar_t, acc_t>, kNarrowOutputs);
    } else if (wide && shape.out_channels % 64 == 0) {
      in_row_blocks(convolve_row_blocks<64, scalar_t, acc_t>, 64);
    } else if (wide && shape.out_channels % 96 == 0) {
      in_row_blocks(convolve_row_blocks<96, scalar_t, acc_t>, 96);
    } else if (wide && shape.out_channels % 48 == 0) {
      in_row_blocks(convolve_row_blocks<48, scalar_t, acc_t>, 48);
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
      const acc_t* w = packed_weight(shape.out_channels);
      const int64_t blocks = (shape.outputs + kRowBlock - 1) / kRowBlock;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        convolve_range<scalar_t, acc_t>(x, w, map, y, &shape, begin, end);
      });
    }
  });
  return out;
}

// Per tap, the (output row, input row) pairs of the kernel map in output-row order: tap k's pairs are
// [begin(k), end(k)) of `outputs` and `inputs` (CSR by tap). Each row's present taps are listed first
// (list_present_taps). For a stem (125 taps, 4 input channels) building the lists still takes about twice as long as
// the weight-gradient kernel.
struct PairsByTap {
  std::vector<int64_t> offsets;  // taps + 1
  std::unique_ptr<int32_t[]> outputs, inputs;   // not zero-filled: every slot is written

  PairsByTap(const int32_t* neighbors, int64_t rows, int64_t taps) : offsets(taps + 1, 0) {
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t k = 0; k < taps; ++k) offsets[k + 1] += neighbors[m * taps + k] >= 0;
    }
    for (int64_t k = 0; k < taps; ++k) offsets[k + 1] += offsets[k];
    outputs.reset(new int32_t[offsets[taps]]);
    inputs.reset(new int32_t[offsets[taps]]);
    std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1), present(taps);
    for (int64_t m = 0; m < rows; ++m) {
      const int32_t* row = neighbors + m * taps;
      const int64_t count = list_present_taps(row, taps, present.data());
      for (int64_t p = 0; p < count; ++p) {
        const int64_t k = present[p];
        outputs[cursor[k]] = static_cast<int32_t>(m);
        inputs[cursor[k]++] = row[k];
      }
    }
  }

  int64_t begin(int64_t tap) const { return offsets[tap]; }
  int64_t end(int64_t tap) const { return offsets[tap + 1]; }
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
    for (int64_t p = pairs->begin(k); p < pairs->end(k); ++p) {
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
// channels; single Chunks for taps < 4, so kernel-1 layers still split); a thread takes a run of tasks. It walks
// the output rows in blocks whose gradient rows fill about kGradientBlockBytes, and in each block runs all of its tasks
// on their pairs in that block, so the block's gradient rows (and the input rows of neighbouring taps) are read from
// L2 by every tap instead of from memory once per tap (on a 115k-site, 96-channel layer: 72 -> 91 GFLOP/s).
// A task's pairs in a block go in even tiles of at most kTile; for every 4 input channels the 4 x Chunk block of the
// tap's gradient is held in registers over the tile, reading the pairs' rows where they lie (float and double; half
// and bfloat16 rows are converted into a tile buffer first), loaded from and stored to grad_weight itself (zero before
// the tap's first tile). Each element therefore sums its tap's pairs in list order, whatever the blocks, tiles or
// thread split, and every element is written, so results are deterministic and grad_weight needs no zero fill.
constexpr int64_t kGroupWidth = 256;
constexpr int64_t kGradientBlockBytes = 256 * 1024;
constexpr int64_t kMinGradientBlockRows = 512;   // fewer made tiles too short (256 -> 384 channels: 87 -> 75 GFLOP/s)

template <int Chunk, typename scalar_t, typename acc_t>
SV_VECTOR_CLONES void weight_grad_in_registers(const scalar_t* features, const scalar_t* grad_output,
                                               const PairsByTap* pairs, acc_t* grad_weight, const ConvShape* shape,
                                               int64_t group_chunks, int64_t block_rows, int64_t begin,
                                               int64_t end) {
  constexpr int kInputs = 4, kTile = 128;
  constexpr int kVectors = Chunk / kLanes<acc_t>;
  const int64_t in_channels = shape->in_channels, out_channels = shape->out_channels;
  const int64_t chunks = out_channels / Chunk, groups_per_tap = (chunks + group_chunks - 1) / group_chunks;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  std::vector<acc_t> inputs_tile(convert ? kTile * in_channels : 0);
  std::vector<acc_t> gradients_tile(convert ? kTile * group_chunks * Chunk : 0);
  const acc_t* input_rows[kTile];
  const acc_t* gradient_rows[kTile];
  std::vector<int64_t> cursor(end - begin);   // each task's next pair
  for (int64_t task = begin; task < end; ++task) {
    const int64_t k = task / groups_per_tap, c0 = task % groups_per_tap * group_chunks;
    cursor[task - begin] = pairs->begin(k);
    if (pairs->begin(k) == pairs->end(k)) {
      acc_t* dw = grad_weight + k * in_channels * out_channels + c0 * Chunk;
      const int64_t group = std::min(group_chunks, chunks - c0);
      for (int64_t i = 0; i < in_channels; ++i) {
        std::fill(dw + i * out_channels, dw + i * out_channels + group * Chunk, acc_t(0));
      }
    }
  }
  for (int64_t block_end = block_rows;; block_end += block_rows) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / groups_per_tap, c0 = task % groups_per_tap * group_chunks;
      const int64_t group = std::min(group_chunks, chunks - c0);
      acc_t* dw = grad_weight + k * in_channels * out_channels + c0 * Chunk;
      const int64_t tap_begin = pairs->begin(k);
      const int64_t range_begin = cursor[task - begin];
      int64_t range_end = range_begin;
      while (range_end < pairs->end(k) && pairs->outputs[range_end] < block_end) ++range_end;
      cursor[task - begin] = range_end;
      if (range_begin == range_end) continue;
      const int64_t tile_pairs = at::divup(range_end - range_begin, at::divup(range_end - range_begin, kTile));
      for (int64_t first = range_begin; first < range_end; first += tile_pairs) {
        const int tile = static_cast<int>(std::min<int64_t>(tile_pairs, range_end - first));
        for (int t = 0; t < tile; ++t) {
          const scalar_t* x = features + int64_t(pairs->inputs[first + t]) * in_channels;
          const scalar_t* dy = grad_output + int64_t(pairs->outputs[first + t]) * out_channels + c0 * Chunk;
          if constexpr (convert) {
            acc_t* x_row = inputs_tile.data() + t * in_channels;
            acc_t* dy_row = gradients_tile.data() + t * group_chunks * Chunk;
            for (int64_t i = 0; i < in_channels; ++i) x_row[i] = static_cast<acc_t>(x[i]);
            for (int64_t j = 0; j < group * Chunk; ++j) dy_row[j] = static_cast<acc_t>(dy[j]);
            input_rows[t] = x_row;
            gradient_rows[t] = dy_row;
          } else {
            input_rows[t] = x;
            gradient_rows[t] = dy;
          }
        }
        for (int64_t c = 0; c < group; ++c) {
          for (int64_t i0 = 0; i0 < in_channels; i0 += kInputs) {
            const int valid = static_cast<int>(std::min<int64_t>(kInputs, in_channels - i0));
            acc_t* target = dw + i0 * out_channels + c * Chunk;
            Vector<acc_t> acc[kInputs][kVectors];
            for (int r = 0; r < kInputs; ++r) {
              for (int v = 0; v < kVectors; ++v) {
                acc[r][v] = first != tap_begin && r < valid
                                ? load_vector(target + r * out_channels + v * kLanes<acc_t>)
                                : Vector<acc_t>{};
              }
            }
            if (valid == kInputs) {
              for (int t = 0; t < tile; ++t) {
                const acc_t* x = input_rows[t] + i0;
                const acc_t* gradient = gradient_rows[t] + c * Chunk;
                Vector<acc_t> dy[kVectors];
                for (int v = 0; v < kVectors; ++v) dy[v] = load_vector(gradient + v * kLanes<acc_t>);
                for (int r = 0; r < kInputs; ++r) {
                  for (int v = 0; v < kVectors; ++v) acc[r][v] += x[r] * dy[v];
                }
              }
            } else {
              for (int t = 0; t < tile; ++t) {
                const acc_t* x = input_rows[t] + i0;
                const acc_t* gradient = gradient_rows[t] + c * Chunk;
                for (int r = 0; r < valid; ++r) {
                  for (int v = 0; v < kVectors; ++v) acc[r][v] += x[r] * load_vector(gradient + v * kLanes<acc_t>);
                }
              }
            }
            for (int r = 0; r < valid; ++r) {
              for (int v = 0; v < kVectors; ++v) {
                store_vector(target + r * out_channels + v * kLanes<acc_t>, acc[r][v]);
              }
            }
          }
        }
      }
    }
    if (block_end >= shape->outputs) break;
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
  if (groups == 1 && shape.out_channels % 16 != 0 && shape.outputs > 0) {   // zero gradient columns
    return sparse_conv_weight_grad_cpu(features, padded_outputs(grad_output, 1), neighbors, inverse_neighbors, 1)
        .narrow(2, 0, shape.out_channels)
        .contiguous();
  }
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
        const int64_t block_rows = std::max<int64_t>(
            kMinGradientBlockRows, kGradientBlockBytes / (shape.out_channels * int64_t(sizeof(acc_t))));
        at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
          kernel(x, dy, &pairs, dw, &shape, group_chunks, block_rows, begin, end);
        });
      };
      if (in_registers && shape.out_channels % 64 == 0) {
        run(weight_grad_in_registers<64, scalar_t, acc_t>, 64);
      } else if (in_registers && shape.out_channels % 48 == 0) {
        run(weight_grad_in_registers<48, scalar_t, acc_t>, 48);
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

at::Tensor sparse_conv_on_cpu(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                              const at::Tensor& inverse_neighbors, int64_t groups) {
  return sparse_conv_cpu(features, weight, neighbors, inverse_neighbors, groups);
}

void register_sparse_conv_cpu(torch::Library& m) {
  m.impl("sparse_conv", &sparse_conv_cpu);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cpu);
}

}  // namespace sparsevision
