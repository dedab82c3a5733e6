// Shared argument checks of the token-routing kernels (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

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

}  // namespace sparsevision
