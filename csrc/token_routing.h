// Shared argument checks of the token-routing kernels (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace sparsevision {

// tokens [B, N, C] floating point, index [B, K] int64 on the same device.
inline void check_routing_arguments(const at::Tensor& tokens, const at::Tensor& index, const char* op) {
  TORCH_CHECK_VALUE(tokens.dim() == 3, op, ": tokens must be [batch, tokens, channels], got ", tokens.sizes());
  TORCH_CHECK_VALUE(index.dim() == 2, op, ": index must be [batch, count], got ", index.sizes());
  TORCH_CHECK_VALUE(index.scalar_type() == at::kLong, op, ": index must be int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.size(0) == tokens.size(0), op, ": index has batch ", index.size(0),
                    " but tokens have batch ", tokens.size(0));
  TORCH_CHECK_VALUE(index.device() == tokens.device(), op, ": index is on ", index.device(),
                    " but tokens are on ", tokens.device());
  TORCH_CHECK_VALUE(at::isFloatingType(tokens.scalar_type()), op, ": tokens must be floating point, got ",
                    tokens.scalar_type());
}

// scatter_tokens: tokens [B, K, C], index [B, K], num_tokens >= 0.
inline void check_scatter_arguments(const at::Tensor& tokens, const at::Tensor& index, int64_t num_tokens) {
  check_routing_arguments(tokens, index, "scatter_tokens");
  TORCH_CHECK_VALUE(index.size(1) == tokens.size(1), "scatter_tokens: index has ", index.size(1),
                    " entries per sample but tokens have ", tokens.size(1), " rows");
  TORCH_CHECK_VALUE(num_tokens >= 0, "scatter_tokens: num_tokens must be >= 0, got ", num_tokens);
}

// merge_tokens: tokens [B, N, C], sizes [B, N] of the tokens' dtype, index [B, N], num_out >= 0.
inline void check_merge_arguments(const at::Tensor& tokens, const at::Tensor& sizes, const at::Tensor& index,
                                  int64_t num_out) {
  check_routing_arguments(tokens, index, "merge_tokens");
  TORCH_CHECK_VALUE(index.size(1) == tokens.size(1), "merge_tokens: index has ", index.size(1),
                    " entries per sample but tokens have ", tokens.size(1), " rows");
  TORCH_CHECK_VALUE(sizes.dim() == 2 && sizes.size(0) == tokens.size(0) && sizes.size(1) == tokens.size(1),
                    "merge_tokens: sizes must be [batch, tokens] = [", tokens.size(0), ", ", tokens.size(1),
                    "], got ", sizes.sizes());
  TORCH_CHECK_VALUE(sizes.scalar_type() == tokens.scalar_type(), "merge_tokens: sizes are ", sizes.scalar_type(),
                    " but tokens are ", tokens.scalar_type());
  TORCH_CHECK_VALUE(sizes.device() == tokens.device(), "merge_tokens: sizes are on ", sizes.device(),
                    " but tokens are on ", tokens.device());
  TORCH_CHECK_VALUE(num_out >= 0, "merge_tokens: num_out must be >= 0, got ", num_out);
}

// select_tokens: scores [B, M] floating point, 0 <= keep <= M, num_prefix >= 0.
inline void check_select_arguments(const at::Tensor& scores, int64_t keep, int64_t num_prefix) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "select_tokens: scores must be [batch, tokens], got ", scores.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(scores.scalar_type()), "select_tokens: scores must be floating point, got ",
                    scores.scalar_type());
  TORCH_CHECK_VALUE(keep >= 0 && keep <= scores.size(1), "select_tokens: keep must lie in [0, ", scores.size(1),
                    "], got ", keep);
  TORCH_CHECK_VALUE(num_prefix >= 0, "select_tokens: num_prefix must be >= 0, got ", num_prefix);
}

// Each sample's index entries grouped by value, without atomics or host syncs: `order` [B, K] lists the positions of
// index [B, K] by ascending value (a stable sort, so equal values keep their position order), and the entries with
// value v in [0, values) are order[b, runs[b, v] .. runs[b, v + 1]) (runs [B, values + 1]); other values fall
// outside every run.
inline std::pair<at::Tensor, at::Tensor> runs_by_value(const at::Tensor& index, int64_t values) {
  auto [sorted, order] = index.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor starts = at::arange(values + 1, index.options()).expand({index.size(0), values + 1}).contiguous();
  return {order.contiguous(), at::searchsorted(sorted, starts).contiguous()};
}

}  // namespace sparsevision
