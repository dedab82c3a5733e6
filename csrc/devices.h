// One device per op call. The dispatcher runs an op's CUDA kernel when any argument is on CUDA, so a kernel must not
// assume its other arguments are there too: a CPU map beside CUDA features would hand host pointers to a kernel.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <utility>

namespace sparsevision {

// Every named tensor on the first one's device, else a ValueError naming both devices.
inline void check_same_device(const char* op, std::initializer_list<std::pair<const char*, at::Tensor>> arguments) {
  const auto& [first_name, first] = *arguments.begin();
  for (const auto& [name, tensor] : arguments) {
    TORCH_CHECK_VALUE(tensor.device() == first.device(), op, ": ", name, " is on ", tensor.device(), " but ",
                      first_name, " is on ", first.device(), "; move every argument to one device (e.g. ", name,
                      ".to(", first_name, ".device))");
  }
}

}  // namespace sparsevision
