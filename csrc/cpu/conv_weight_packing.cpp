// The AVX-512 16 x 16 float transpose of pack_weight (conv_weight_packing.h).
#include "conv_weight_packing.h"

#ifdef SV_AVX512_TRANSPOSE
#include <immintrin.h>

namespace sparsevision {

// GCC 12's intrinsics start some results from _mm512_undefined_*, which -Wuninitialized reports falsely.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// Pairs of rows interleaved as 32-, 64-, then 128-bit and 256-bit lanes.
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

}  // namespace sparsevision
#endif
