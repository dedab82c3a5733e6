// Kernel registration of sparsevision._C, done when Python asks for it (register_kernels in extension.cpp) rather
// than by static initialisers: registering a kernel against a schema that changed since the build throws, and a throw
// during dlopen aborts the process. Each function registers one source file's kernels with `m`, a torch::Library
// for the sparsevision namespace and the file's dispatch key.
#pragma once

#include <torch/library.h>

namespace sparsevision {

void register_batch_norm_cpu(torch::Library& m);
void register_indexed_attention_cpu(torch::Library& m);
void register_kernel_map_cpu(torch::Library& m);
void register_sparse_conv_cpu(torch::Library& m);
void register_spike_conv_cpu(torch::Library& m);
void register_token_merge_cpu(torch::Library& m);
void register_token_routing_cpu(torch::Library& m);
void register_token_select_cpu(torch::Library& m);

#ifdef WITH_CUDA
void register_indexed_attention_cuda(torch::Library& m);
void register_kernel_map_cuda(torch::Library& m);
void register_gather_gemm_conv_cuda(torch::Library& m);
void register_token_merge_cuda(torch::Library& m);
void register_token_routing_cuda(torch::Library& m);
void register_token_select_cuda(torch::Library& m);
#endif

}  // namespace sparsevision
