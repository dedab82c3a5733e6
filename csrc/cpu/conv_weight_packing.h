// Packing of the sparse-convolution weight into each CPU path's layout, in the accumulation type.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sparsevision {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SV_AVX512_TRANSPOSE 1
// to[j * to_stride + i] = from[i * from_stride + j] for a 16 x 16 block of floats, in AVX-512 registers.
__attribute__((target("avx512f"))) void transpose_16x16(const float* from, int64_t from_stride, float* to,
                                                         int64_t to_stride);
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

// The weight as [taps][out / chunk][in][chunk] acc_t (pack_weight): the weight's own memory where it already is
// that, else this thread's packing buffer.
template <typename scalar_t, typename acc_t>
const acc_t* packed_weight(const at::Tensor& weight, int64_t chunk) {
  if (chunk == weight.size(2) && std::is_same_v<scalar_t, acc_t> && weight.is_contiguous()) {
    return reinterpret_cast<const acc_t*>(weight.data_ptr<scalar_t>());
  }
  acc_t* packed = packing_buffer<acc_t>(weight.numel());
  pack_weight<scalar_t, acc_t>(weight, chunk, packed);
  return packed;
}

}  // namespace sparsevision
