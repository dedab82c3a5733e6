// CUDA kernels of sparsevision::gather_tokens and sparsevision::scatter_tokens.
//
// Deterministic without atomics: scatter_tokens gives every (batch, channel)
// column to one thread, which adds the K rows in index order. Index values
// are validated on the host-visible path (sparsevision.ops checks them before
// calling); the kernels skip out-of-range entries instead of writing out of
// bounds. Half and bfloat16 accumulate in float32.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../registration.h"
#include "../token_routing.h"

namespace sparsevision {
namespace {

constexpr int kThreads = 256;

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

template <typename scalar_t, typename accumulate_t>
__global__ void scatter_tokens_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ idx,
                                      accumulate_t* __restrict__ dst, int64_t batch, int64_t count,
                                      int64_t num_tokens, int64_t channels) {
  const int64_t columns = batch * channels;
  for (int64_t column = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; column < columns;
       column += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = column / channels;
    const int64_t c = column % channels;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t n = idx[b * count + k];
      if (n < 0 || n >= num_tokens) continue;
      dst[(b * num_tokens + n) * channels + c] += static_cast<accumulate_t>(src[(b * count + k) * channels + c]);
    }
  }
}

int blocks_for(int64_t work) {
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535));
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
    gather_tokens_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        tokens.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), count, num_tokens,
        channels, out.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor scatter_tokens_cuda(const at::Tensor& tokens_in, const at::Tensor& index_in, int64_t num_tokens) {
  check_scatter_arguments(tokens_in, index_in, num_tokens);
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), count = tokens.size(1), channels = tokens.size(2);
  at::Tensor out = scatter_accumulator(tokens, num_tokens);
  if (tokens.numel() == 0 || out.numel() == 0) return out.to(tokens.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "scatter_tokens_cuda", [&] {
    using accumulate_t = at::opmath_type<scalar_t>;
    scatter_tokens_kernel<scalar_t, accumulate_t>
        <<<blocks_for(batch * channels), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            tokens.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), out.data_ptr<accumulate_t>(), batch, count,
            num_tokens, channels);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.to(tokens.scalar_type());
}

}  // namespace

void register_token_routing_cuda(torch::Library& m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("scatter_tokens", &scatter_tokens_cuda);
}

}  // namespace sparsevision
