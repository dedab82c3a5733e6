// ConvAlgorithm::kRowPairs: output rows in fixed pairs, their accumulators in vector registers.
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

}  // namespace

void row_pairs_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                    const ConvShape& shape, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_row_pairs", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const acc_t* w = packed_weight<scalar_t, acc_t>(weight, shape.out_channels);
    auto run = [&](auto kernel) {
      at::parallel_for(0, (shape.outputs + 1) / 2, kRowBlock / 2, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, begin, end);
      });
    };
    if (shape.out_channels % 64 == 0) {
      run(convolve_rows_in_registers<64, scalar_t, acc_t>);
    } else if (shape.out_channels % 32 == 0) {
      run(convolve_rows_in_registers<32, scalar_t, acc_t>);
    } else {
      run(convolve_rows_in_registers<16, scalar_t, acc_t>);
    }
  });
}

}  // namespace sparsevision
