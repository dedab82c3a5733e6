// CPU emulation stand-in for c10's CUDAGuard (see csrc/emulation/cuda_emulation.h): the emulated kernels take CPU
// tensors, so there is no device to switch to.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

}  // namespace c10::cuda
