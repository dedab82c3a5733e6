// ConvAlgorithm::kGrouped: blocks of output rows, the rows that have tap k four at a time, group by group.
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

constexpr int kRowsAtOnce = 4;

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

}  // namespace

void grouped_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                  const ConvShape& shape, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_grouped", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const acc_t* w = packed_weight<scalar_t, acc_t>(weight, shape.out_channels);
    const int64_t blocks = (shape.outputs + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      convolve_range<scalar_t, acc_t>(x, w, map, y, &shape, begin, end);
    });
  });
}

}  // namespace sparsevision
