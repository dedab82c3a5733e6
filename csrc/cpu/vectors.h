// Portable fixed-width vectors for the CPU kernels (GCC/Clang vector extensions) and the ISA clones they compile to.
#pragma once

#include <cstring>

namespace sparsevision {

// Functions marked SV_VECTOR_CLONES are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SV_VECTOR_CLONES
#endif

// 64-byte vectors: each target clone lowers them to its own instructions.
// (Declared per type: GCC drops vector_size on a dependent alias template.)
template <typename T>
struct VectorOf;
template <>
struct VectorOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VectorOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vector = typename VectorOf<T>::type;
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

template <typename T>
inline __attribute__((always_inline)) Vector<T> load_vector(const T* source) {
  Vector<T> value;
  std::memcpy(&value, source, sizeof(value));
  return value;
}

template <typename T>
inline __attribute__((always_inline)) void store_vector(T* target, Vector<T> value) {
  std::memcpy(target, &value, sizeof(value));
}

}  // namespace sparsevision
