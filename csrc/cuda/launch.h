// Launching the CUDA kernels: one syntax for nvcc and for the CPU emulation build, and the grid shape they share.
//
// SV_LAUNCH(grid, block, stream, kernel)(arguments...) is kernel<<<grid, block, 0, stream>>>(arguments...) under
// nvcc. Compiled by the host compiler for the CPU emulation (csrc/emulation/, SV_CUDA_EMULATION), it runs every block
// and thread of the grid on the calling CPU thread instead.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define SV_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#elif defined(SV_CUDA_EMULATION)
#define SV_LAUNCH(grid, block, stream, ...) ::sv_emulation::launch((grid), (block), __VA_ARGS__)
#else
#error "csrc/cuda/*.cu compile with nvcc, or with the host compiler for the CPU emulation (SV_CUDA_EMULATION)"
#endif

// for (int64_t i = this thread's first item; i < count; i += all threads of the grid)
#define SV_GRID_STRIDE_LOOP(i, count)                                                      \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (count); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

namespace sparsevision {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// Blocks of kThreads for a grid-stride loop over `work` items: at least one, at most kMaxBlocks.
inline int blocks_for(int64_t work) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)));
}

}  // namespace sparsevision
