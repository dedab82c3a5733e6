// CPU kernel of sparsevision::spike_sparse_conv: a sparse convolution whose work scales with the non-zero input
// spikes, not with the occupied sites.
//
// out[m, o] = sum over taps k (in order), then input channels i (in order) with spikes[n, i] != 0, n = neighbors[m, k],
//   of spikes[n, i] * weight[k, i, o].
// Adding a zero leaves a partial sum unchanged, and the order is sparse_conv's, so with finite weights the result
// equals sparse_conv(spikes, weight, neighbors, inverse, 1) bit for bit (binary spikes add weight rows exactly as
// 1 * w does). Layers with at most kNarrowOutputs outputs, where sparse_conv sums in another order (and a weight row
// is too short for skipping zeros to pay), run sparse_conv's own kernel.
//
// 1. Each input site's non-zero channels are listed once (CSR of weight-row offsets i * out_channels, plus values
//    unless every spike is 1), in parallel; float32 rows are compressed with AVX-512 where the CPU has it.
// 2. Output rows go in fixed groups of four (two when their accumulators would not fit the registers). A row's
//    events are its present taps' site lists, copied with the tap's offset added (16 at a time), so they come in
//    tap, then channel order. The group's lists are consumed in lockstep: independent accumulator chains hide the
//    add and load latency, with Chunk-wide accumulators in registers. Rows are grouped by number, not by the thread
//    split, so results are bitwise identical at any thread count.
//    Finished float32 rows go to memory with non-temporal stores where AVX-512 is available.
// 3. Kernel-map entries are range-checked as the rows read them (not in a pass of their own); a bad entry is skipped
//    and the op raises after the parallel loop, so nothing out of range is ever read.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../registration.h"
#include "../sparse_conv.h"
#include "conv_algorithm.h"
#include "vectors.h"

namespace sparsevision {
namespace {

constexpr int64_t kRowBlock = 32;
constexpr int64_t kSiteBlock = 1024;
constexpr int64_t kSlack = 16;  // list entries that may be written past a list's end

typedef int32_t OffsetVector __attribute__((vector_size(64)));  // 16 weight-row offsets

struct SpikeShape {
  int64_t inputs, outputs, taps, in_channels, out_channels;
};

// Writes the non-zero entries of one row: weight-row offsets i * out_channels and their values; clears *binary when
// a non-zero entry is not 1. Returns the count.
template <typename scalar_t>
int64_t compress_row_portable(const scalar_t* row, int64_t channels, int64_t out_channels, int32_t* offsets,
                              scalar_t* values, bool* binary) {
  int64_t count = 0;
  for (int64_t i = 0; i < channels; ++i) {
    if (row[i] == scalar_t(0)) continue;
    offsets[count] = static_cast<int32_t>(i * out_channels);
    values[count++] = row[i];
    *binary &= row[i] == scalar_t(1);
  }
  return count;
}

#if defined(__GNUC__) && defined(__x86_64__)
// The same for a float32 row with AVX-512: 16 channels per compare and compress (may write kSlack entries past the
// row's count).
__attribute__((target("avx512f"))) int64_t compress_row_avx512(const float* row, int64_t channels,
                                                                int64_t out_channels, int32_t* offsets, float* values,
                                                                bool* binary) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  __m512i channel_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(static_cast<int32_t>(out_channels)));
  const __m512i step = _mm512_set1_epi32(static_cast<int32_t>(16 * out_channels));
  int64_t count = 0;
  __mmask16 not_one = 0;
  for (int64_t i = 0; i < channels; i += 16) {
    const __mmask16 valid = channels - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (channels - i)) - 1);
    const __m512 spike = _mm512_maskz_loadu_ps(valid, row + i);
    const __mmask16 fired = _mm512_mask_cmp_ps_mask(valid, spike, zero, _CMP_NEQ_UQ);
    not_one |= fired & ~_mm512_cmp_ps_mask(spike, one, _CMP_EQ_OQ);
    _mm512_storeu_si512(offsets + count, _mm512_maskz_compress_epi32(fired, channel_offsets));
    _mm512_storeu_ps(values + count, _mm512_maskz_compress_ps(fired, spike));
    channel_offsets = _mm512_add_epi32(channel_offsets, step);
    count += __builtin_popcount(fired);
  }
  *binary &= not_one == 0;
  return count;
}
#endif

#if defined(__GNUC__) && defined(__x86_64__)
// Writes count (a multiple of 16) floats to a 64-byte aligned target with non-temporal stores: the output is
// written once and not read back here, so its cache lines need not be fetched first (a third less memory traffic).
__attribute__((target("avx512f"))) void stream_floats(float* target, const float* source, int64_t count) {
  for (int64_t i = 0; i < count; i += 16) _mm512_stream_ps(target + i, _mm512_loadu_ps(source + i));
}
#endif

// Orders the streamed stores before anything that follows (the join of the parallel loop).
inline void finish_streamed_stores() {
#if defined(__GNUC__) && defined(__x86_64__)
  _mm_sfence();
#endif
}

// True when rows of Chunk outputs at out can be written by stream_floats (float32, AVX-512, 64-byte aligned rows).
template <int Chunk, typename scalar_t>
bool can_stream_output(const scalar_t* out, int64_t out_channels) {
#if defined(__GNUC__) && defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, float> && Chunk % 16 == 0) {
    static const bool has_avx512 = __builtin_cpu_supports("avx512f");
    return has_avx512 && reinterpret_cast<uintptr_t>(out) % 64 == 0 && out_channels % 16 == 0;
  }
#endif
  return false;
}

// The non-zero spikes of every input site, as weight-row offsets and values: site n's are row_offsets[n][0, counts[n])
// (values likewise). One pass over the spikes: blocks of kSiteBlock sites are compressed into a scratch buffer, then
// kept in a vector of their own (with kSlack entries of padding after it).
template <typename scalar_t>
struct SiteSpikes {
  std::vector<const int32_t*> row_offsets;
  std::vector<const scalar_t*> row_values;
  std::vector<int32_t> counts;
  std::vector<std::vector<int32_t>> block_offsets;
  std::vector<std::vector<scalar_t>> block_values;
  bool binary = true;  // every non-zero value is 1

  SiteSpikes(const scalar_t* spikes, int64_t rows, int64_t channels, int64_t out_channels)
      : row_offsets(rows), row_values(rows), counts(rows) {
    const int64_t blocks = at::divup(rows, kSiteBlock);
    block_offsets.resize(blocks);
    block_values.resize(blocks);
    std::vector<char> block_binary(std::max<int64_t>(blocks, 1), 1);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> scratch_offsets(kSiteBlock * channels + kSlack);
      std::vector<scalar_t> scratch_values(kSiteBlock * channels + kSlack);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kSiteBlock, last = std::min(rows, first + kSiteBlock);
        bool block_ones = true;
        int64_t cursor = 0;
        for (int64_t n = first; n < last; ++n) {
          counts[n] = static_cast<int32_t>(compress_row(spikes + n * channels, channels, out_channels,
                                                        scratch_offsets.data() + cursor,
                                                        scratch_values.data() + cursor, &block_ones));
          cursor += counts[n];
        }
        std::vector<int32_t>& kept_offsets = block_offsets[block];
        std::vector<scalar_t>& kept_values = block_values[block];
        kept_offsets.assign(scratch_offsets.begin(), scratch_offsets.begin() + cursor);
        kept_offsets.resize(cursor + kSlack, 0);
        kept_values.assign(scratch_values.begin(), scratch_values.begin() + cursor);
        kept_values.resize(cursor + kSlack, scalar_t(0));
        for (int64_t n = first, start = 0; n < last; start += counts[n++]) {
          row_offsets[n] = kept_offsets.data() + start;
          row_values[n] = kept_values.data() + start;
        }
        block_binary[block] = block_ones;
      }
    });
    binary = std::all_of(block_binary.begin(), block_binary.end(), [](char b) { return b != 0; });
  }

  // AVX-512 for float32 where the CPU has it, else portable.
  static int64_t compress_row(const scalar_t* row, int64_t channels, int64_t out_channels, int32_t* row_offsets,
                              scalar_t* row_values, bool* ones) {
#if defined(__GNUC__) && defined(__x86_64__)
    if constexpr (std::is_same_v<scalar_t, float>) {
      static const bool has_avx512 = __builtin_cpu_supports("avx512f");
      if (has_avx512) return compress_row_avx512(row, channels, out_channels, row_offsets, row_values, ones);
    }
#endif
    return compress_row_portable(row, channels, out_channels, row_offsets, row_values, ones);
  }
};

// Row m's events in sum order: each present tap's site list with the tap's weight offset added; returns the count.
// Entries that are neither -1 nor an input row are skipped and set *bad_entry.
template <bool Binary, typename scalar_t>
inline __attribute__((always_inline)) int64_t list_events(const SiteSpikes<scalar_t>& sites,
                                                          const int32_t* row_neighbors, const SpikeShape& shape,
                                                          int32_t* offsets, scalar_t* values, bool* bad_entry) {
  int64_t count = 0;
  for (int64_t k = 0; k < shape.taps; ++k) {
    const int32_t n = row_neighbors[k];
    if (n < 0 || n >= shape.inputs) {
      *bad_entry |= n != -1;
      continue;
    }
    const int32_t tap_base = static_cast<int32_t>(k * shape.in_channels * shape.out_channels);
    const int32_t* source = sites.row_offsets[n];
    const int64_t length = sites.counts[n];
    for (int64_t e = 0; e < length; e += 16) {
      OffsetVector block;
      std::memcpy(&block, source + e, sizeof(block));
      block += tap_base;
      std::memcpy(offsets + count + e, &block, sizeof(block));
    }
    if constexpr (!Binary) std::copy_n(sites.row_values[n], length, values + count);
    count += length;
  }
  return count;
}

template <int Vectors, bool Binary, typename scalar_t>
inline __attribute__((always_inline)) void add_event(const scalar_t* weight_row, scalar_t value,
                                                     Vector<scalar_t>* acc) {
  for (int c = 0; c < Vectors; ++c) {
    if constexpr (Binary) {
      acc[c] += load_vector(weight_row + c * kLanes<scalar_t>);
    } else {
      acc[c] += value * load_vector(weight_row + c * kLanes<scalar_t>);
    }
  }
}

// Rows consumed in lockstep by the register path: four when their accumulators fit in the 32 AVX-512 registers.
template <int Chunk, typename scalar_t>
constexpr int kLockstepRows = Chunk / kLanes<scalar_t> <= 4 ? 4 : 2;

// out_channels a multiple of Chunk: groups of kLockstepRows rows with Chunk-wide register accumulators.
template <int Chunk, bool Binary, typename scalar_t>
SV_VECTOR_CLONES void spike_rows_in_registers(const SiteSpikes<scalar_t>* sites, const scalar_t* weight,
                                              const int32_t* neighbors, scalar_t* out, const SpikeShape* shape,
                                              int64_t first_group, int64_t last_group, bool* bad_entry,
                                              bool stream) {
  constexpr int kVectors = Chunk / kLanes<scalar_t>;
  constexpr int kRows = kLockstepRows<Chunk, scalar_t>;
  static_assert(Chunk % kLanes<scalar_t> == 0, "Chunk must be a whole number of vectors");
  const int64_t capacity = shape->taps * shape->in_channels + kSlack, out_channels = shape->out_channels;
  std::vector<int32_t> offsets(kRows * capacity);
  std::vector<scalar_t> values(Binary ? 0 : kRows * capacity);
  for (int64_t group = first_group; group < last_group; ++group) {
    const int64_t m = kRows * group;
    const int rows = static_cast<int>(std::min<int64_t>(kRows, shape->outputs - m));
    int64_t counts[kRows] = {};
    for (int r = 0; r < rows; ++r) {
      counts[r] = list_events<Binary>(*sites, neighbors + (m + r) * shape->taps, *shape,
                                      offsets.data() + r * capacity, Binary ? nullptr : values.data() + r * capacity,
                                      bad_entry);
    }
    const int64_t common = rows == kRows ? *std::min_element(counts, counts + kRows) : 0;
    for (int64_t o0 = 0; o0 < out_channels; o0 += Chunk) {
      Vector<scalar_t> acc[kRows][kVectors] = {};
      for (int64_t e = 0; e < common; ++e) {
        for (int r = 0; r < kRows; ++r) {
          add_event<kVectors, Binary>(weight + offsets[r * capacity + e] + o0,
                                      Binary ? scalar_t(1) : values[r * capacity + e], acc[r]);
        }
      }
      for (int r = 0; r < rows; ++r) {
        for (int64_t e = common; e < counts[r]; ++e) {
          add_event<kVectors, Binary>(weight + offsets[r * capacity + e] + o0,
                                      Binary ? scalar_t(1) : values[r * capacity + e], acc[r]);
        }
        scalar_t* target = out + (m + r) * out_channels + o0;
#if defined(__GNUC__) && defined(__x86_64__)
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (stream) {
            stream_floats(target, reinterpret_cast<const float*>(acc[r]), Chunk);
            continue;
          }
        }
#endif
        std::memcpy(target, acc[r], sizeof(acc[r]));
      }
    }
  }
}

// Any out_channels: one row at a time, accumulators in memory, the same order.
template <bool Binary, typename scalar_t>
SV_VECTOR_CLONES void spike_rows(const SiteSpikes<scalar_t>* sites, const scalar_t* weight, const int32_t* neighbors,
                                 scalar_t* out, const SpikeShape* shape, int64_t begin, int64_t end, bool* bad_entry) {
  const int64_t capacity = shape->taps * shape->in_channels + kSlack, out_channels = shape->out_channels;
  std::vector<int32_t> offsets(capacity);
  std::vector<scalar_t> values(capacity, scalar_t(1));
  for (int64_t m = begin; m < end; ++m) {
    const int64_t count = list_events<Binary>(*sites, neighbors + m * shape->taps, *shape, offsets.data(),
                                              values.data(), bad_entry);
    scalar_t* acc = out + m * out_channels;
    std::fill(acc, acc + out_channels, scalar_t(0));
    for (int64_t e = 0; e < count; ++e) {
      const scalar_t* w = weight + offsets[e];
      const scalar_t v = values[e];
      for (int64_t o = 0; o < out_channels; ++o) acc[o] += v * w[o];
    }
  }
}

at::Tensor spike_sparse_conv_cpu(const at::Tensor& spikes_in, const at::Tensor& weight_in,
                                 const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors) {
  check_conv_arguments(spikes_in, weight_in, neighbors_in, 1);
  TORCH_CHECK_VALUE(spikes_in.scalar_type() == at::kFloat || spikes_in.scalar_type() == at::kDouble,
                    "spike_sparse_conv: spikes must be float32 or float64, got ", spikes_in.scalar_type());
  if (weight_in.size(2) <= kNarrowOutputs) {
    return sparse_conv_on_cpu(spikes_in, weight_in, neighbors_in, inverse_neighbors, 1);
  }
  const at::Tensor spikes = spikes_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  const SpikeShape shape{spikes.size(0), neighbors.size(0), neighbors.size(1), spikes.size(1), weight.size(2)};
  TORCH_CHECK_VALUE(shape.taps * shape.in_channels * shape.out_channels < (int64_t(1) << 31),
                    "spike_sparse_conv: weight has 2^31 elements or more; use sparse_conv");
  at::Tensor out = at::empty({shape.outputs, shape.out_channels}, spikes.options());
  if (out.numel() == 0) {
    check_neighbor_range(neighbors, spikes.size(0), "spike_sparse_conv");
    return out;
  }
  std::atomic<bool> bad_entries{false};
  AT_DISPATCH_FLOATING_TYPES(spikes.scalar_type(), "spike_sparse_conv_cpu", [&] {
    const SiteSpikes<scalar_t> sites(spikes.data_ptr<scalar_t>(), spikes.size(0), shape.in_channels,
                                     shape.out_channels);
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const int32_t* map = neighbors.data_ptr<int32_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    auto run = [&](auto binary) {
      constexpr bool kBinary = decltype(binary)::value;
      auto in_registers = [&](auto kernel, int rows_at_once, bool stream) {
        at::parallel_for(0, at::divup(shape.outputs, int64_t(rows_at_once)), kRowBlock / rows_at_once,
                         [&](int64_t begin, int64_t end) {
                           bool bad_entry = false;
                           kernel(&sites, w, map, y, &shape, begin, end, &bad_entry, stream);
                           if (stream) finish_streamed_stores();
                           if (bad_entry) bad_entries = true;
                         });
      };
      if (shape.out_channels % 64 == 0) {
        in_registers(spike_rows_in_registers<64, kBinary, scalar_t>, kLockstepRows<64, scalar_t>,
                     can_stream_output<64>(y, shape.out_channels));
      } else if (shape.out_channels % 32 == 0) {
        in_registers(spike_rows_in_registers<32, kBinary, scalar_t>, kLockstepRows<32, scalar_t>,
                     can_stream_output<32>(y, shape.out_channels));
      } else if (shape.out_channels % 16 == 0) {
        in_registers(spike_rows_in_registers<16, kBinary, scalar_t>, kLockstepRows<16, scalar_t>,
                     can_stream_output<16>(y, shape.out_channels));
      } else {
        at::parallel_for(0, shape.outputs, kRowBlock, [&](int64_t begin, int64_t end) {
          bool bad_entry = false;
          spike_rows<kBinary, scalar_t>(&sites, w, map, y, &shape, begin, end, &bad_entry);
          if (bad_entry) bad_entries = true;
        });
      }
    };
    if (sites.binary) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  if (bad_entries.load()) check_neighbor_range(neighbors, spikes.size(0), "spike_sparse_conv");  // raises
  return out;
}

}  // namespace

void register_spike_conv_cpu(torch::Library& m) { m.impl("spike_sparse_conv", &spike_sparse_conv_cpu); }

}  // namespace sparsevision
