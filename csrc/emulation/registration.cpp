// Registers the CPU-emulated CUDA kernels (csrc/cuda/*.cu compiled by the host compiler) as the CPU kernels of the
// `sv_emu` op namespace, whose schemas tests/cuda_emulation.py defines from sparsevision/ops/schemas.py, and adds
// sv_emu::launch_count(), the number of emulated launches so far.
#include <torch/library.h>

#include "../registration.h"

namespace {

int64_t launch_count() { return sv_emulation::launches.load(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(sv_emu, m) { m.def("launch_count() -> int", &launch_count); }

TORCH_LIBRARY_IMPL(sv_emu, CPU, m) {
  for (auto kernels : {sparsevision::register_gather_gemm_conv_cuda, sparsevision::register_indexed_attention_cuda,
                       sparsevision::register_kernel_map_cuda, sparsevision::register_token_merge_cuda,
                       sparsevision::register_token_routing_cuda, sparsevision::register_token_select_cuda}) {
    kernels(m);
  }
}
