// CUDA kernel of sparsevision::merge_tokens (semantics in csrc/cpu/token_merge.cpp).
//
// Deterministic without atomics. runs_by_value (csrc/token_routing.h) lists every slot's tokens in ascending order
// (order) and where each slot's run starts (slot_offsets). Then one thread per (sample, slot)
// sums merged_sizes and one thread per (sample, slot, channel) sums the
// products sizes * tokens, both walking the run in ascending token order, as
// the CPU kernel does. Products are rounded before the add (__fmul_rn /
// __dmul_rn, never fused into an FMA) and the quotient is IEEE division, so
// results match the CPU kernel bitwise. Index values are validated by the
// Python wrapper; values outside [0, num_out) sort outside every slot's run
// and are skipped. Half and bfloat16 accumulate in float32.
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

__device__ __forceinline__ float rounded_product(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double rounded_product(double a, double b) { return __dmul_rn(a, b); }

template <typename scalar_t, typename accumulate_t>
__global__ void merged_sizes_kernel(const scalar_t* __restrict__ sizes, const int64_t* __restrict__ order,
                                    const int64_t* __restrict__ slot_offsets, accumulate_t* __restrict__ merged_sizes,
                                    int64_t num_tokens, int64_t num_out, int64_t slots) {
  for (int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; slot < slots;
       slot += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = slot / num_out;
    const int64_t* offsets = slot_offsets + b * (num_out + 1) + slot % num_out;
    accumulate_t sum = 0;
    for (int64_t position = offsets[0]; position < offsets[1]; ++position) {
      sum += static_cast<accumulate_t>(sizes[b * num_tokens + order[b * num_tokens + position]]);
    }
    merged_sizes[slot] = sum;
  }
}

template <typename scalar_t, typename accumulate_t>
__global__ void merge_tokens_kernel(const scalar_t* __restrict__ tokens, const scalar_t* __restrict__ sizes,
                                    const int64_t* __restrict__ order, const int64_t* __restrict__ slot_offsets,
                                    const accumulate_t* __restrict__ merged_sizes, scalar_t* __restrict__ merged,
                                    int64_t num_tokens, int64_t num_out, int64_t channels, int64_t total) {
  for (int64_t element = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; element < total;
       element += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = element % channels;
    const int64_t slot = element / channels;  // b * num_out + j
    const int64_t b = slot / num_out;
    const int64_t* offsets = slot_offsets + b * (num_out + 1) + slot % num_out;
    accumulate_t sum = 0;
    for (int64_t position = offsets[0]; position < offsets[1]; ++position) {
      const int64_t token = b * num_tokens + order[b * num_tokens + position];
      sum += rounded_product(static_cast<accumulate_t>(sizes[token]),
                             static_cast<accumulate_t>(tokens[token * channels + c]));
    }
    // An empty slot has sum 0 and size 0; dividing by 1 keeps it 0.
    const accumulate_t divisor = merged_sizes[slot] != accumulate_t(0) ? merged_sizes[slot] : accumulate_t(1);
    merged[element] = static_cast<scalar_t>(sum / divisor);
  }
}


std::tuple<at::Tensor, at::Tensor> merge_tokens_cuda(const at::Tensor& tokens_in, const at::Tensor& sizes_in,
                                                     const at::Tensor& index_in, int64_t num_out) {
  check_merge_arguments(tokens_in, sizes_in, index_in, num_out);
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor sizes = sizes_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), num_tokens = tokens.size(1), channels = tokens.size(2);
  at::Tensor merged = at::empty({batch, num_out, channels}, tokens.options());
  at::Tensor merged_sizes = at::zeros({batch, num_out}, sizes.options().dtype(at::toOpMathType(sizes.scalar_type())));
  if (batch * num_out == 0 || num_tokens == 0) return {merged.zero_(), merged_sizes.to(sizes.scalar_type())};
  const auto [order, slot_offsets] = runs_by_value(index, num_out);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "merge_tokens_cuda", [&] {
    using accumulate_t = at::opmath_type<scalar_t>;
    SV_LAUNCH(blocks_for(batch * num_out), kThreads, stream, merged_sizes_kernel<scalar_t, accumulate_t>)(
        sizes.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), slot_offsets.data_ptr<int64_t>(),
        merged_sizes.data_ptr<accumulate_t>(), num_tokens, num_out, batch * num_out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (merged.numel() == 0) return;
    SV_LAUNCH(blocks_for(merged.numel()), kThreads, stream, merge_tokens_kernel<scalar_t, accumulate_t>)(
        tokens.data_ptr<scalar_t>(), sizes.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
        slot_offsets.data_ptr<int64_t>(), merged_sizes.data_ptr<accumulate_t>(), merged.data_ptr<scalar_t>(),
        num_tokens, num_out, channels, merged.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {merged, merged_sizes.to(sizes.scalar_type())};
}

}  // namespace

void register_token_merge_cuda(torch::Library& m) {
  m.impl("merge_tokens", &merge_tokens_cuda);
}

}  // namespace sparsevision
