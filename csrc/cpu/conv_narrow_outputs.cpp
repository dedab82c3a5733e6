// ConvAlgorithm::kNarrowOutputs: each of at most kNarrowOutputs outputs a dot product along the input channels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "conv_algorithm.h"
#include "conv_paths.h"
#include "conv_weight_packing.h"
#include "vectors.h"

namespace sparsevision {
namespace {

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

}  // namespace

void narrow_outputs_conv(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                         const ConvShape& shape, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_narrow_outputs", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    auto run = [&](auto kernel, int64_t outputs) {
      const int64_t padded = at::divup(shape.in_channels, int64_t(kLanes<acc_t>)) * kLanes<acc_t>;
      acc_t* w = packing_buffer<acc_t>(shape.taps * outputs * padded);
      pack_weight_by_output<scalar_t, acc_t>(weight, outputs, padded, w);
      at::parallel_for(0, shape.outputs, kRowBlock, [&](int64_t begin, int64_t end) {
        kernel(x, w, map, y, &shape, begin, end);
      });
    };
    if (shape.out_channels <= 4) {
      run(convolve_narrow_outputs<4, scalar_t, acc_t>, 4);
    } else {
      run(convolve_narrow_outputs<kNarrowOutputs, scalar_t, acc_t>, kNarrowOutputs);
    }
  });
}

}  // namespace sparsevision
