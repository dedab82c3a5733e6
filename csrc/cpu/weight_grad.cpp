// The CPU paths of sparsevision::sparse_conv_weight_grad: grad_weight[k, i_local, o] = sum over m (in order) of
// features[neighbors[m, k], i] * grad_output[m, o]. The map is first regrouped into per-tap pair lists, then tasks
// walk them: register-blocked tiles in blocks of output rows (WeightGradAlgorithm::kRegisterTiles, groups == 1), or
// one task per (tap, input-channel block) (WeightGradAlgorithm::kGrouped).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "conv_algorithm.h"
#include "conv_paths.h"
#include "vectors.h"

namespace sparsevision {
namespace {

constexpr int64_t kChannelBlock = 16;

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

}  // namespace

at::Tensor weight_grad_on(WeightGradAlgorithm algorithm, const at::Tensor& features, const at::Tensor& grad_output,
                          const at::Tensor& neighbors, const ConvShape& shape) {
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sparse_conv_wgrad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto options = features.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const std::vector<int64_t> sizes{shape.taps, shape.in_per_group, shape.out_channels};
    // The register tiles write every element themselves.
    const bool tiles = algorithm == WeightGradAlgorithm::kRegisterTiles;
    at::Tensor grad_weight = tiles ? at::empty(sizes, options) : at::zeros(sizes, options);
    const PairsByTap pairs(neighbors.data_ptr<int32_t>(), shape.outputs, shape.taps);
    const scalar_t* x = features.data_ptr<scalar_t>();
    const scalar_t* dy = grad_output.data_ptr<scalar_t>();
    acc_t* dw = grad_weight.data_ptr<acc_t>();
    auto run = [&](auto kernel, int64_t chunk) {
      const int64_t chunks = shape.out_channels / chunk;
      const int64_t group_chunks = shape.taps < 4 ? 1 : std::max<int64_t>(1, std::min(chunks, kGroupWidth / chunk));
      const int64_t tasks = shape.taps * ((chunks + group_chunks - 1) / group_chunks);
      const int64_t block_rows = std::max<int64_t>(
          kMinGradientBlockRows, kGradientBlockBytes / (shape.out_channels * int64_t(sizeof(acc_t))));
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        kernel(x, dy, &pairs, dw, &shape, group_chunks, block_rows, begin, end);
      });
    };
    if (tiles && shape.out_channels % 64 == 0) {
      run(weight_grad_in_registers<64, scalar_t, acc_t>, 64);
    } else if (tiles && shape.out_channels % 48 == 0) {
      run(weight_grad_in_registers<48, scalar_t, acc_t>, 48);
    } else if (tiles && shape.out_channels % 32 == 0) {
      run(weight_grad_in_registers<32, scalar_t, acc_t>, 32);
    } else if (tiles) {
      run(weight_grad_in_registers<16, scalar_t, acc_t>, 16);
    } else {
      const int64_t channel_blocks = std::max<int64_t>(1, (shape.in_per_group + kChannelBlock - 1) / kChannelBlock);
      at::parallel_for(0, shape.taps * channel_blocks, 1, [&](int64_t begin, int64_t end) {
        weight_grad_range<scalar_t, acc_t>(x, dy, &pairs, dw, &shape, channel_blocks, begin, end);
      });
    }
    result = grad_weight.to(features.scalar_type());
  });
  return result;
}

}  // namespace sparsevision
