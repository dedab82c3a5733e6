// exp(x) for x <= 0 (softmax weights), written as arithmetic only so that a loop over an array of them vectorises
// (std::exp is a library call per element). float: range reduction x = n ln2 + r with |r| <= ln2 / 2, a degree-6
// polynomial for e^r (Cephes' coefficients, relative error about 1e-7) and 2^n put into the exponent bits; below
// -87 (where 2^n leaves the normal range) the result is 0. double keeps std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sparsevision {

inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float clamped = x < -87.0f ? -87.0f : x;
  const float n = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - n * kLn2High) - n * kLn2Low;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : e_r * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

}  // namespace sparsevision
