// CUDA kernels of sparsevision::gather_tokens and sparsevision::scatter_tokens.
//
// Deterministic without atomics: scatter_tokens groups each sample's rows by destination (runs_by_value in
// csrc/token_routing.h) and gives every output element to one thread, which adds its rows in index order, as the CPU
// kernel does, so the sums match it bitwise. Index values are validated by the Python wrappers (sparsevision.ops);
// the kernels skip out-of-range entries instead of reading or writing out of bounds. Half and bfloat16 accumulate in
// float32.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../registration.h"
#include "../token_routing.h"
#include "launch.h"

namespace sparsevision {
namespace {

template <typename scalar_t>
__global__ void gather_tokens_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ idx,
                                     scalar_t* __restrict__ dst, int64_t count, int64_t num_tokens,
                                     int64_t channels, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const int64_t row = i / channels;  // b * count + k
    const int64_t b = row / count;
    const int64_t n = idx[row];
    dst[i] = (n >= 0 && n < num_tokens) ? src[(b * num_tokens + n) * channels + c] : scalar_t(0);
  }
}

// dst[b, n, c] = the sum, in position order, of src[b, k, c] over the k with index[b, k] == n.
template <typename scalar_t, typename accumulate_t>
__global__ void scatter_tokens_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ runs, scalar_t* __restrict__ dst, int64_t count,
                                      int64_t num_tokens, int64_t channels, int64_t total) {
  SV_GRID_STRIDE_LOOP(element, total) {
    const int64_t c = element % channels;
    const int64_t row = element / channels;  // b * num_tokens + n
    const int64_t b = row / num_tokens;
    const int64_t* run = runs + b * (num_tokens + 1) + row % num_tokens;
    accumulate_t sum = 0;
    for (int64_t position = run[0]; position < run[1]; ++position) {
      sum += static_cast<accumulate_t>(src[(b * count + order[b * count + position]) * channels + c]);
    }
    dst[element] = static_cast<scalar_t>(sum);
  }
}

at::Tensor gather_tokens_cuda(const at::Tensor& tokens_in, const at::Tensor& index_in) {
  check_routing_arguments(tokens_in, index_in, "gather_tokens");
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), num_tokens = tokens.size(1), channels = tokens.size(2);
  const int64_t count = index.size(1);
  at::Tensor out = at::empty({batch, count, channels}, tokens.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "gather_tokens_cuda", [&] {
    SV_LAUNCH(blocks_for(out.numel()), kThreads, c10::cuda::getCurrentCUDAStream(),
              gather_tokens_kernel<scalar_t>)(tokens.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                              out.data_ptr<scalar_t>(), count, num_tokens, channels, out.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor scatter_tokens_cuda(const at::Tensor& tokens_in, const at::Tensor& index_in, int64_t num_tokens) {
  check_scatter_arguments(tokens_in, index_in, num_tokens);
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t count = tokens.size(1), channels = tokens.size(2);
  at::Tensor out = at::empty({tokens.size(0), num_tokens, channels}, tokens.options());
  if (tokens.numel() == 0 || out.numel() == 0) return out.zero_();  // the kernel writes every element otherwise
  const auto [order, runs] = runs_by_value(index, num_tokens);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "scatter_tokens_cuda", [&] {
    using accumulate_t = at::opmath_type<scalar_t>;
    SV_LAUNCH(blocks_for(out.numel()), kThreads, c10::cuda::getCurrentCUDAStream(),
              scatter_tokens_kernel<scalar_t, accumulate_t>)(tokens.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
                                                             runs.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), count,
                                                             num_tokens, channels, out.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

void register_token_routing_cuda(torch::Library& m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("scatter_tokens", &scatter_tokens_cuda);
}

}  // namespace sparsevision
