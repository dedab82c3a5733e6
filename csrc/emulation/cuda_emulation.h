// The CPU emulation of the CUDA kernels (a test build, see tests/cuda_emulation.py): force-included (-include) when
// the host compiler compiles csrc/cuda/*.cu.
//
// Kernel qualifiers become nothing, blockIdx/threadIdx/blockDim/gridDim are per-thread globals, and SV_LAUNCH
// (csrc/cuda/launch.h) runs each (block, thread) of a launch in turn on the calling CPU thread, in the order
// SV_EMULATION_ORDER names: `forward` (the default), `reverse` or `shuffle` (blocks, and threads within each block,
// in a random order seeded by SV_EMULATION_SEED). A launch that CUDA would refuse (an empty grid, too many threads
// per block) throws. Kernels that need threads to run concurrently (shared memory, barriers, warp intrinsics) cannot
// run here; none of ours use them.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};

inline thread_local uint3 blockIdx, threadIdx;
inline thread_local dim3 blockDim, gridDim;

// One emulated thread runs at a time, so read-modify-writes are atomic as they stand.
inline int atomicCAS(int* address, int expected, int desired) {
  const int old = *address;
  if (old == expected) *address = desired;
  return old;
}

inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

// Rounded products, never fused into an FMA (the build passes -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

namespace sv_emulation {

// Launches run since the library was loaded (tests count the launches of one op call).
inline std::atomic<int64_t> launches{0};

enum class Order { kForward, kReverse, kShuffle };

inline Order visiting_order() {
  const char* order = std::getenv("SV_EMULATION_ORDER");
  if (order == nullptr || std::strcmp(order, "forward") == 0) return Order::kForward;
  if (std::strcmp(order, "reverse") == 0) return Order::kReverse;
  TORCH_CHECK(std::strcmp(order, "shuffle") == 0, "SV_EMULATION_ORDER must be forward, reverse or shuffle, got ",
              order);
  return Order::kShuffle;
}

inline std::mt19937_64& random_engine() {
  static thread_local std::mt19937_64 engine([] {
    const char* seed = std::getenv("SV_EMULATION_SEED");
    return seed == nullptr ? 0ull : std::strtoull(seed, nullptr, 10);
  }());
  return engine;
}

// 0 .. count - 1 in the visiting order.
inline std::vector<int64_t> ordered(int64_t count, Order order) {
  std::vector<int64_t> ids(count);
  std::iota(ids.begin(), ids.end(), 0);
  if (order == Order::kReverse) std::reverse(ids.begin(), ids.end());
  if (order == Order::kShuffle) std::shuffle(ids.begin(), ids.end(), random_engine());
  return ids;
}

inline uint3 unflatten(int64_t id, const dim3& extent) {
  uint3 index;
  index.x = static_cast<unsigned int>(id % extent.x);
  index.y = static_cast<unsigned int>(id / extent.x % extent.y);
  index.z = static_cast<unsigned int>(id / (int64_t(extent.x) * extent.y));
  return index;
}

// The limits a CUDA launch checks (compute capability 8.x/9.x).
inline void check_launch(const dim3& grid, const dim3& block) {
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
                  grid.z <= 65535,
              "emulated CUDA launch: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && block.z <= 64 && threads <= 1024,
              "emulated CUDA launch: invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
}

template <typename Kernel>
struct Launch {
  dim3 grid, block;
  Kernel kernel;

  template <typename... Arguments>
  void operator()(Arguments... arguments) const {
    check_launch(grid, block);
    ++launches;
    const Order order = visiting_order();
    gridDim = grid;
    blockDim = block;
    const int64_t threads = int64_t(block.x) * block.y * block.z;
    for (const int64_t block_id : ordered(int64_t(grid.x) * grid.y * grid.z, order)) {
      blockIdx = unflatten(block_id, grid);
      for (const int64_t thread_id : ordered(threads, order)) {
        threadIdx = unflatten(thread_id, block);
        kernel(arguments...);
      }
    }
  }
};

template <typename Kernel>
Launch<Kernel> launch(dim3 grid, dim3 block, Kernel kernel) {
  return {grid, block, kernel};
}

}  // namespace sv_emulation
