// CUDA kernels of sparsevision::gather_gemm_conv and gather_gemm_conv_weight_grad: sparse_conv's gather-GEMM path.
//
// The kernel map is first split into per-tap pair lists (output row, input row), ordered by tap, then output row.
// For each tap in turn the input rows are gathered, multiplied by the tap's weight (at::mm / at::bmm, i.e. cuBLAS) and
// added to their output rows. An output row appears at most once per tap, so the adds need no atomics, and taps are
// summed in a fixed order: on one GPU model the results are reproducible bit for bit. Half and bfloat16 rows are
// gathered into float32 and multiplied by a float32 copy of the weight, so products and sums stay in float32 and the
// result is rounded once (float32 GEMMs use TF32 only when torch.backends.cuda.matmul.allow_tf32 allows it).
//
// This is the fallback path (see sparsevision/ops/gpu/conv.py): splitting the map costs three host syncs per call.
//
// The weight gradient is, per tap, gathered inputs^T @ gathered output gradients; the input gradient is
// sparse_conv itself on the inverse map (see sparsevision/ops/sparse_conv.py).
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../registration.h"
#include "../sparse_conv.h"
#include "launch.h"

namespace sparsevision {
namespace {

// destination[p, c] = source[rows[p], c], converted to acc_t.
template <typename scalar_t, typename acc_t>
__global__ void gather_rows_kernel(const scalar_t* __restrict__ source, const int64_t* __restrict__ rows,
                                   int64_t count, int64_t channels, acc_t* __restrict__ destination) {
  SV_GRID_STRIDE_LOOP(i, count * channels) {
    destination[i] = static_cast<acc_t>(source[rows[i / channels] * channels + i % channels]);
  }
}

// destination[rows[p], c] += source[p, c]; `rows` holds no row twice.
template <typename acc_t>
__global__ void add_rows_kernel(const acc_t* __restrict__ source, const int64_t* __restrict__ rows, int64_t count,
                                int64_t channels, acc_t* __restrict__ destination) {
  SV_GRID_STRIDE_LOOP(i, count * channels) {
    destination[rows[i / channels] * channels + i % channels] += source[i];
  }
}

// source's rows `rows`, in the accumulation dtype: [P, C].
at::Tensor gather_rows(const at::Tensor& source, const at::Tensor& rows) {
  const int64_t channels = source.size(1);
  at::Tensor gathered =
      at::empty({rows.size(0), channels}, source.options().dtype(at::toOpMathType(source.scalar_type())));
  if (gathered.numel() == 0) return gathered;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "gather_rows_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SV_LAUNCH(blocks_for(gathered.numel()), kThreads, c10::cuda::getCurrentCUDAStream(),
              gather_rows_kernel<scalar_t, acc_t>)(source.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
                                                   rows.size(0), channels, gathered.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gathered;
}

// destination[rows[p]] += source[p] (both in the accumulation dtype).
void add_rows(const at::Tensor& source, const at::Tensor& rows, at::Tensor& destination) {
  const int64_t channels = source.size(1);
  if (source.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "add_rows_cuda", [&] {
    SV_LAUNCH(blocks_for(source.numel()), kThreads, c10::cuda::getCurrentCUDAStream(), add_rows_kernel<scalar_t>)(
        source.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), rows.size(0), channels,
        destination.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The kernel map's entries as per-tap lists; tap k's pairs are [starts[k], starts[k + 1]).
struct TapPairs {
  at::Tensor out_rows, in_rows;  // int64 [pairs]
  std::vector<int64_t> starts;

  TapPairs(const at::Tensor& neighbors, int64_t rows) {
    const int64_t taps = neighbors.size(1);
    const at::Tensor present = neighbors.t() >= 0;  // [taps, M]
    const at::Tensor positions = present.nonzero();  // (tap, output row), row-major: by tap, then row
    out_rows = positions.select(1, 1).contiguous();
    in_rows = neighbors.reshape(-1).index_select(0, out_rows * taps + positions.select(1, 0)).to(at::kLong);
    TORCH_CHECK_VALUE(!((neighbors < -1) | (neighbors >= rows)).any().item<bool>(),
                      "sparse_conv: kernel map entries must be -1 or rows of features (< ", rows, ")");
    const at::Tensor counts = present.sum(1).cpu();
    const int64_t* count = counts.data_ptr<int64_t>();
    starts.assign(taps + 1, 0);
    for (int64_t k = 0; k < taps; ++k) starts[k + 1] = starts[k] + count[k];
  }
};

// [P, G * I] rows times one tap's [I, G * O] weight, group by group: [P, G * O].
at::Tensor grouped_product(const at::Tensor& rows, const at::Tensor& weight, int64_t groups) {
  if (groups == 1) return at::mm(rows, weight);
  const int64_t count = rows.size(0), in_per_group = weight.size(0), out_per_group = weight.size(1) / groups;
  if (in_per_group == 1 && out_per_group == 1) return rows * weight;  // depthwise: a per-channel scale
  const at::Tensor per_group = at::bmm(rows.view({count, groups, in_per_group}).transpose(0, 1),
                                       weight.view({in_per_group, groups, out_per_group}).transpose(0, 1));
  return per_group.transpose(0, 1).reshape({count, groups * out_per_group});
}

// [P, G * I] rows and [P, G * O] output gradients -> one tap's weight gradient [I, G * O].
at::Tensor grouped_outer_product(const at::Tensor& rows, const at::Tensor& grad_rows, int64_t groups) {
  if (groups == 1) return at::mm(rows.t(), grad_rows);
  const int64_t count = rows.size(0), in_per_group = rows.size(1) / groups, out_per_group = grad_rows.size(1) / groups;
  if (in_per_group == 1 && out_per_group == 1) return (rows * grad_rows).sum(0, /*keepdim=*/true);
  const at::Tensor per_group = at::bmm(rows.view({count, groups, in_per_group}).permute({1, 2, 0}),
                                       grad_rows.view({count, groups, out_per_group}).transpose(0, 1));
  return per_group.transpose(0, 1).reshape({in_per_group, groups * out_per_group});
}

at::Tensor gather_gemm_conv_cuda(const at::Tensor& features_in, const at::Tensor& weight_in,
                                 const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors, int64_t groups) {
  check_conv_arguments(features_in, weight_in, neighbors_in, groups);
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::ScalarType acc = at::toOpMathType(features_in.scalar_type());
  const at::Tensor features = features_in.contiguous();
  const at::Tensor weight = weight_in.to(acc).contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  const int64_t outputs = neighbors.size(0), out_channels = weight.size(2);
  at::Tensor out = at::zeros({outputs, out_channels}, features.options().dtype(acc));
  if (out.numel() == 0) return out.to(features.scalar_type());
  const TapPairs pairs(neighbors, features.size(0));
  for (int64_t k = 0; k < neighbors.size(1); ++k) {
    const int64_t begin = pairs.starts[k], end = pairs.starts[k + 1];
    if (begin == end) continue;
    const at::Tensor gathered = gather_rows(features, pairs.in_rows.slice(0, begin, end));
    add_rows(grouped_product(gathered, weight[k], groups), pairs.out_rows.slice(0, begin, end), out);
  }
  return out.to(features.scalar_type());
}

at::Tensor gather_gemm_conv_weight_grad_cuda(const at::Tensor& features_in, const at::Tensor& grad_output_in,
                                             const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors,
                                             int64_t groups) {
  check_weight_grad_arguments(features_in, grad_output_in, neighbors_in, groups);
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(features.scalar_type()).contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  const int64_t taps = neighbors.size(1), in_per_group = features.size(1) / groups;
  at::Tensor grad_weight = at::zeros({taps, in_per_group, grad_output.size(1)},
                                     features.options().dtype(at::toOpMathType(features.scalar_type())));
  if (grad_weight.numel() == 0) return grad_weight.to(features.scalar_type());
  const TapPairs pairs(neighbors, features.size(0));
  for (int64_t k = 0; k < taps; ++k) {
    const int64_t begin = pairs.starts[k], end = pairs.starts[k + 1];
    if (begin == end) continue;
    const at::Tensor rows = gather_rows(features, pairs.in_rows.slice(0, begin, end));
    const at::Tensor grad_rows = gather_rows(grad_output, pairs.out_rows.slice(0, begin, end));
    grad_weight[k].copy_(grouped_outer_product(rows, grad_rows, groups));
  }
  return grad_weight.to(features.scalar_type());
}

}  // namespace

void register_gather_gemm_conv_cuda(torch::Library& m) {
  m.impl("gather_gemm_conv", &gather_gemm_conv_cuda);
  m.impl("gather_gemm_conv_weight_grad", &gather_gemm_conv_weight_grad_cuda);
}

}  // namespace sparsevision
