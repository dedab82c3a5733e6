// ConvAlgorithm::kRowBlocks: blocks of output rows walked tap by tap, each packed weight slice serving the block.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "conv_paths.h"
#include "conv_weight_packing.h"
#include "vectors.h"

namespace sparsevision {
namespace {

// Wide layers (the weight over about a quarter of L2, see choose_conv_algorithm): the same per-row sums as
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

}  // namespace

void row_blocks_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                     const ConvShape& shape, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_row_blocks", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    auto run = [&](auto kernel, int64_t chunk) {
      const acc_t* w = packed_weight<scalar_t, acc_t>(weight, chunk);
      const RowBlocks blocks(shape.outputs, shape.out_channels, sizeof(acc_t));
      at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, blocks.rows, begin, end);
      });
    };
    if (shape.out_channels % 64 == 0) {
      run(convolve_row_blocks<64, scalar_t, acc_t>, 64);
    } else if (shape.out_channels % 96 == 0) {
      run(convolve_row_blocks<96, scalar_t, acc_t>, 96);
    } else if (shape.out_channels % 48 == 0) {
      run(convolve_row_blocks<48, scalar_t, acc_t>, 48);
    } else if (shape.out_channels % 32 == 0) {
      run(convolve_row_blocks<32, scalar_t, acc_t>, 32);
    } else {
      run(convolve_row_blocks<16, scalar_t, acc_t>, 16);
    }
  });
}

}  // namespace sparsevision
