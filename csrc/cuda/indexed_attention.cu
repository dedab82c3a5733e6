// CUDA kernels of sparsevision::indexed_attention and indexed_attention_backward (semantics in
// csrc/cpu/indexed_attention.cpp and sparsevision/ops/reference.py).
//
// One thread per (query, head) scores the query's slots, takes the softmax against their maximum and sums the
// weighted values; one thread per (key, head) sums that key's gradients over the slots naming it, in (query, slot)
// order, after a stable sort of the index. Every sum has one writer and a fixed order: no atomics, the same bits run
// to run. Sums are kept in float32 (float64 for float64) buffers and rounded once. Index entries outside [0, keys)
// are read as empty slots (the Python wrapper checks the index once and remembers it), never dereferenced. Query,
// key and value rows may be strided (views of one projection).
// A correctness-first kernel: scalar loops, no shared-memory tiling yet.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <math.h>
#include <torch/library.h>

#include <limits>

#include "../indexed_attention.h"
#include "../registration.h"
#include "launch.h"

namespace sparsevision {
namespace {

template <typename scalar_t, typename acc_t>
__device__ acc_t slot_score(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                            const scalar_t* __restrict__ bias, const AttentionShape shape, int64_t q, int64_t h,
                            int64_t l, int64_t n, acc_t scale) {
  const scalar_t* qh = query + q * shape.query_stride + h * shape.head_dim;
  const scalar_t* kh = key + n * shape.key_stride + h * shape.head_dim;
  acc_t sum = 0;
  for (int64_t d = 0; d < shape.head_dim; ++d) sum += static_cast<acc_t>(qh[d]) * static_cast<acc_t>(kh[d]);
  sum *= scale;
  if (bias) sum += static_cast<acc_t>(bias[shape.bias_offset(q, h) + l]);
  return sum;
}

template <typename scalar_t, typename acc_t>
__global__ void attend_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                              const scalar_t* __restrict__ value, const int32_t* __restrict__ index,
                              const scalar_t* __restrict__ bias, const AttentionShape shape, acc_t scale,
                              acc_t* __restrict__ sums, acc_t* __restrict__ lse) {
  SV_GRID_STRIDE_LOOP(row, shape.queries * shape.heads) {
    const int64_t q = row / shape.heads, h = row % shape.heads;
    const int32_t* slots = index + q * shape.slots;
    acc_t largest = -std::numeric_limits<acc_t>::infinity();
    for (int64_t l = 0; l < shape.slots; ++l) {
      const int64_t n = slots[l];
      if (n < 0 || n >= shape.keys) continue;
      const acc_t score = slot_score(query, key, bias, shape, q, h, l, n, scale);
      largest = score > largest ? score : largest;
    }
    acc_t* acc = sums + row * shape.value_dim;   // zero-filled by the host
    if (largest == -std::numeric_limits<acc_t>::infinity()) {
      lse[row] = largest;
      continue;
    }
    acc_t total = 0;
    for (int64_t l = 0; l < shape.slots; ++l) {
      const int64_t n = slots[l];
      if (n < 0 || n >= shape.keys) continue;
      const acc_t weight = exp(slot_score(query, key, bias, shape, q, h, l, n, scale) - largest);
      total += weight;
      const scalar_t* vh = value + n * shape.value_stride + h * shape.value_dim;
      for (int64_t d = 0; d < shape.value_dim; ++d) acc[d] += weight * static_cast<acc_t>(vh[d]);
    }
    for (int64_t d = 0; d < shape.value_dim; ++d) acc[d] /= total;
    lse[row] = largest + log(total);
  }
}

// Per (query, head): the probabilities and score gradients of its slots ([queries, heads, slots], zero where empty)
// and the query gradient (unscaled sums in grad_query).
template <typename scalar_t, typename acc_t>
__global__ void query_gradients_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                       const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                       const int32_t* __restrict__ index, const scalar_t* __restrict__ bias,
                                       const acc_t* __restrict__ lse, const AttentionShape shape, acc_t scale,
                                       acc_t* __restrict__ probs, acc_t* __restrict__ grad_scores,
                                       acc_t* __restrict__ grad_query) {
  SV_GRID_STRIDE_LOOP(row, shape.queries * shape.heads) {
    const int64_t q = row / shape.heads, h = row % shape.heads;
    const int32_t* slots = index + q * shape.slots;
    acc_t* p = probs + row * shape.slots;
    acc_t* ds = grad_scores + row * shape.slots;
    const scalar_t* go = grad_out + row * shape.value_dim;
    acc_t delta = 0;
    for (int64_t l = 0; l < shape.slots; ++l) {
      const int64_t n = slots[l];
      p[l] = ds[l] = 0;
      if (n < 0 || n >= shape.keys || lse[row] == -std::numeric_limits<acc_t>::infinity()) continue;
      p[l] = exp(slot_score(query, key, bias, shape, q, h, l, n, scale) - lse[row]);
      const scalar_t* vh = value + n * shape.value_stride + h * shape.value_dim;
      acc_t dp = 0;
      for (int64_t d = 0; d < shape.value_dim; ++d) dp += static_cast<acc_t>(go[d]) * static_cast<acc_t>(vh[d]);
      ds[l] = dp;
      delta += p[l] * dp;
    }
    acc_t* gq = grad_query + row * shape.head_dim;   // zero-filled by the host
    for (int64_t l = 0; l < shape.slots; ++l) {
      const int64_t n = slots[l];
      ds[l] = p[l] * (ds[l] - delta);
      if (n < 0 || n >= shape.keys) continue;
      const scalar_t* kh = key + n * shape.key_stride + h * shape.head_dim;
      for (int64_t d = 0; d < shape.head_dim; ++d) gq[d] += ds[l] * static_cast<acc_t>(kh[d]);
    }
    for (int64_t d = 0; d < shape.head_dim; ++d) gq[d] *= scale;
  }
}

// Per (key, head): the sums over the slots naming the key (entries[offsets[n] .. offsets[n + 1]), flat
// query * slots + slot positions in increasing order).
template <typename scalar_t, typename acc_t>
__global__ void key_gradients_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                     const acc_t* __restrict__ probs, const acc_t* __restrict__ grad_scores,
                                     const int64_t* __restrict__ offsets, const int64_t* __restrict__ entries,
                                     const AttentionShape shape, acc_t scale, acc_t* __restrict__ grad_key,
                                     acc_t* __restrict__ grad_value) {
  SV_GRID_STRIDE_LOOP(row, shape.keys * shape.heads) {
    const int64_t n = row / shape.heads, h = row % shape.heads;
    acc_t* gk = grad_key + row * shape.head_dim;     // zero-filled by the host
    acc_t* gv = grad_value + row * shape.value_dim;
    for (int64_t i = offsets[n]; i < offsets[n + 1]; ++i) {
      const int64_t q = entries[i] / shape.slots, l = entries[i] % shape.slots;
      const int64_t slot = (q * shape.heads + h) * shape.slots + l;
      const scalar_t* qh = query + q * shape.query_stride + h * shape.head_dim;
      const scalar_t* go = grad_out + (q * shape.heads + h) * shape.value_dim;
      for (int64_t d = 0; d < shape.head_dim; ++d) gk[d] += grad_scores[slot] * static_cast<acc_t>(qh[d]);
      for (int64_t d = 0; d < shape.value_dim; ++d) gv[d] += probs[slot] * static_cast<acc_t>(go[d]);
    }
    for (int64_t d = 0; d < shape.head_dim; ++d) gk[d] *= scale;
  }
}

// sums[column] = the sum over queries, in query order, of rows[query, column] ([queries, columns]).
template <typename acc_t>
__global__ void sum_over_queries_kernel(const acc_t* __restrict__ rows, int64_t queries, int64_t columns,
                                        acc_t* __restrict__ sums) {
  SV_GRID_STRIDE_LOOP(column, columns) {
    acc_t sum = 0;
    for (int64_t q = 0; q < queries; ++q) sum += rows[q * columns + column];
    sums[column] = sum;
  }
}

std::tuple<at::Tensor, at::Tensor> indexed_attention_cuda(const at::Tensor& query_in, const at::Tensor& key_in,
                                                          const at::Tensor& value_in, const at::Tensor& index_in,
                                                          const std::optional<at::Tensor>& bias_in, double scale) {
  AttentionShape shape = check_arguments(query_in, key_in, value_in, index_in, bias_in, "indexed_attention");
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = packed_rows(query_in), key = packed_rows(key_in), value = packed_rows(value_in);
  shape.set_row_strides(query, key, value);
  const at::Tensor index = index_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  const auto acc_dtype = at::toOpMathType(query.scalar_type());
  at::Tensor sums = at::zeros({shape.queries, shape.heads, shape.value_dim}, query.options().dtype(acc_dtype));
  at::Tensor lse = at::empty({shape.queries, shape.heads}, query.options().dtype(acc_dtype));
  if (shape.queries * shape.heads > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "indexed_attention_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      SV_LAUNCH(blocks_for(shape.queries * shape.heads), kThreads, c10::cuda::getCurrentCUDAStream(),
                attend_kernel<scalar_t, acc_t>)(
          query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
          index.data_ptr<int32_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, shape,
          static_cast<acc_t>(scale), sums.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {sums.to(query.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> indexed_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
    const at::Tensor& index_in, const std::optional<at::Tensor>& bias_in, const at::Tensor& /*out*/,
    const at::Tensor& lse_in, double scale) {
  AttentionShape shape = check_backward_arguments(grad_out_in, query_in, key_in, value_in, index_in, bias_in, lse_in);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = packed_rows(query_in), key = packed_rows(key_in), value = packed_rows(value_in);
  shape.set_row_strides(query, key, value);
  const at::Tensor grad_out = grad_out_in.contiguous(), index = index_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  const auto acc_options = query.options().dtype(at::toOpMathType(query.scalar_type()));
  at::Tensor probs = at::empty({shape.queries, shape.heads, shape.slots}, acc_options);
  at::Tensor grad_scores = at::empty_like(probs);
  at::Tensor grad_query = at::zeros({shape.queries, shape.heads, shape.head_dim}, acc_options);
  at::Tensor grad_key = at::zeros({shape.keys, shape.heads, shape.head_dim}, acc_options);
  at::Tensor grad_value = at::zeros({shape.keys, shape.heads, shape.value_dim}, acc_options);
  // The slots naming each key, in (query, slot) order: a stable sort of the flat index by key row.
  const auto [keys_sorted, entries] = index.reshape({-1}).to(at::kLong).sort(/*stable=*/true, 0, false);
  const at::Tensor offsets = at::searchsorted(keys_sorted, at::arange(shape.keys + 1, keys_sorted.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "indexed_attention_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (shape.queries * shape.heads > 0) {
      SV_LAUNCH(blocks_for(shape.queries * shape.heads), kThreads, stream, query_gradients_kernel<scalar_t, acc_t>)(
          grad_out.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(),
          value.data_ptr<scalar_t>(), index.data_ptr<int32_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
          lse.data_ptr<acc_t>(), shape, static_cast<acc_t>(scale), probs.data_ptr<acc_t>(),
          grad_scores.data_ptr<acc_t>(), grad_query.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (shape.keys * shape.heads > 0) {
      SV_LAUNCH(blocks_for(shape.keys * shape.heads), kThreads, stream, key_gradients_kernel<scalar_t, acc_t>)(
          grad_out.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), probs.data_ptr<acc_t>(),
          grad_scores.data_ptr<acc_t>(), offsets.data_ptr<int64_t>(), entries.data_ptr<int64_t>(), shape,
          static_cast<acc_t>(scale), grad_key.data_ptr<acc_t>(), grad_value.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor grad_bias = query.new_empty({0});
  if (bias.defined() && shape.bias_per_query) {
    grad_bias = grad_scores.to(query.scalar_type());
  } else if (bias.defined()) {
    at::Tensor sums = at::empty({1, shape.heads, shape.slots}, acc_options);
    const int64_t columns = shape.heads * shape.slots;
    if (columns > 0) {
      AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "indexed_attention_bias_sums", [&] {
        SV_LAUNCH(blocks_for(columns), kThreads, c10::cuda::getCurrentCUDAStream(),
                  sum_over_queries_kernel<scalar_t>)(grad_scores.data_ptr<scalar_t>(), shape.queries, columns,
                                                     sums.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    grad_bias = sums.to(query.scalar_type());
  }
  const auto dtype = query.scalar_type();
  return {grad_query.to(dtype), grad_key.to(dtype), grad_value.to(dtype), grad_bias};
}

}  // namespace

void register_indexed_attention_cuda(torch::Library& m) {
  m.impl("indexed_attention", &indexed_attention_cuda);
  m.impl("indexed_attention_backward", &indexed_attention_backward_cuda);
}

}  // namespace sparsevision
