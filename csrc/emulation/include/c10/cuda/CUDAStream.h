// CPU emulation stand-in for c10's CUDAStream (see csrc/emulation/cuda_emulation.h): emulated launches run at once.
#pragma once

namespace c10::cuda {

struct CUDAStream {};

inline CUDAStream getCurrentCUDAStream() { return {}; }

}  // namespace c10::cuda
