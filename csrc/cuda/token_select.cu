// CUDA kernel of sparsevision::select_tokens (semantics in csrc/cpu/token_select.cpp).
//
// Composed of ATen ops, each deterministic: a stable descending sort of the
// scores with NaN read as -inf ranks by score and then by position; a stable
// sort of the NaN flags in that order moves NaN after -inf; the keep first
// ranked positions, sorted ascending and shifted by num_prefix, follow the
// prefix positions.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../registration.h"
#include "../token_routing.h"

namespace sparsevision {
namespace {

at::Tensor select_tokens_cuda(const at::Tensor& scores, int64_t keep, int64_t num_prefix) {
  check_select_arguments(scores, keep, num_prefix);
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t batch = scores.size(0);
  const at::TensorOptions index_options = scores.options().dtype(at::kLong);
  const at::Tensor prefix = at::arange(num_prefix, index_options).expand({batch, num_prefix});
  if (keep == 0) return prefix.contiguous();
  if (batch == 0) return at::empty({0, num_prefix + keep}, index_options);
  const at::Tensor is_nan = scores.isnan();
  const at::Tensor by_score = std::get<1>(
      scores.masked_fill(is_nan, -std::numeric_limits<double>::infinity()).sort(/*stable=*/true, 1, true));
  const at::Tensor nan_last = std::get<1>(is_nan.gather(1, by_score).to(at::kByte).sort(/*stable=*/true, 1, false));
  const at::Tensor ranked = by_score.gather(1, nan_last);
  const at::Tensor chosen = std::get<0>(ranked.narrow(1, 0, keep).sort(1)) + num_prefix;
  return at::cat({prefix, chosen}, 1);
}

}  // namespace

void register_token_select_cuda(torch::Library& m) {
  m.impl("select_tokens", &select_tokens_cuda);
}

}  // namespace sparsevision
