// Shapes and argument checks of the indexed-attention kernels (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>

#include "coordinates.h"
#include "devices.h"

namespace sparsevision {

struct AttentionShape {
  int64_t queries, keys, heads, head_dim, value_dim, slots;
  bool bias_per_query;
  int64_t query_stride = 0, key_stride = 0, value_stride = 0;  // elements from one row to the next

  // The row strides of query, key and value as packed_rows returned them.
  void set_row_strides(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
    query_stride = query.stride(0);
    key_stride = key.stride(0);
    value_stride = value.stride(0);
  }

  // Where the bias of (query, head) starts: biases are [queries or 1, heads, slots].
  SV_HOST_DEVICE int64_t bias_offset(int64_t query, int64_t head) const {
    return ((bias_per_query ? query : 0) * heads + head) * slots;
  }
};

// A [rows, heads, dim] tensor whose (head, dim) block is packed: itself when only the rows are strided (q, k and v
// unbound from one projection, say), else a contiguous copy.
inline at::Tensor packed_rows(const at::Tensor& rows) {
  const bool packed = (rows.size(2) <= 1 || rows.stride(2) == 1) &&
                      (rows.size(1) <= 1 || rows.stride(1) == rows.size(2)) && rows.stride(0) >= 0;
  return packed ? rows : rows.contiguous();
}

// query [Nq, H, D], key [Nk, H, D], value [Nk, H, Dv] of one dtype, index [Nq, L] int32, bias [Nq or 1, H, L].
inline AttentionShape check_arguments(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                      const at::Tensor& index, const std::optional<at::Tensor>& bias,
                                      const char* op) {
  TORCH_CHECK_VALUE(query.dim() == 3 && key.dim() == 3 && value.dim() == 3, op,
                    ": query, key and value must be [rows, heads, head_dim], got ", query.sizes(), ", ", key.sizes(),
                    " and ", value.sizes());
  TORCH_CHECK_VALUE(index.dim() == 2 && index.scalar_type() == at::kInt && index.size(0) == query.size(0), op,
                    ": index must be int32 [queries, slots] with one row per query, got ", index.scalar_type(), " ",
                    index.sizes());
  const AttentionShape shape{query.size(0), key.size(0),  query.size(1),
                             query.size(2), value.size(2), index.size(1),
                             bias && bias->size(0) != 1};
  TORCH_CHECK_VALUE(key.size(1) == shape.heads && value.size(1) == shape.heads && key.size(2) == shape.head_dim &&
                        value.size(0) == shape.keys, op, ": key ", key.sizes(), " and value ", value.sizes(),
                    " do not fit query ", query.sizes(), " (same heads and head_dim, one value row per key)");
  TORCH_CHECK_VALUE(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(), op,
                    ": query, key and value must share a dtype, got ", query.scalar_type(), ", ", key.scalar_type(),
                    " and ", value.scalar_type());
  if (bias) {
    TORCH_CHECK_VALUE(bias->scalar_type() == query.scalar_type(), op, ": bias must have the dtype of query");
    TORCH_CHECK_VALUE(bias->dim() == 3 && (bias->size(0) == shape.queries || bias->size(0) == 1) &&
                          bias->size(1) == shape.heads && bias->size(2) == shape.slots, op,
                      ": bias must be [queries or 1, heads, slots] = [", shape.queries, " or 1, ", shape.heads, ", ",
                      shape.slots, "], got ", bias->sizes());
    check_same_device(op, {{"query", query}, {"bias", *bias}});
  }
  check_same_device(op, {{"query", query}, {"key", key}, {"value", value}, {"index", index}});
  check_row_count(shape.keys, "key");
  return shape;
}

// The above, plus grad_out [Nq, H, Dv] of query's dtype and lse [Nq, H] of its accumulation dtype.
inline AttentionShape check_backward_arguments(const at::Tensor& grad_out, const at::Tensor& query,
                                               const at::Tensor& key, const at::Tensor& value,
                                               const at::Tensor& index, const std::optional<at::Tensor>& bias,
                                               const at::Tensor& lse) {
  const char* op = "indexed_attention_backward";
  const AttentionShape shape = check_arguments(query, key, value, index, bias, op);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({shape.queries, shape.heads, shape.value_dim}) &&
                        lse.sizes() == at::IntArrayRef({shape.queries, shape.heads}), op,
                    ": grad_out must be [queries, heads, value_dim] and lse [queries, heads]");
  TORCH_CHECK_VALUE(grad_out.scalar_type() == query.scalar_type() &&
                        lse.scalar_type() == at::toOpMathType(query.scalar_type()), op,
                    ": grad_out must have the dtype of query, lse its accumulation dtype");
  check_same_device(op, {{"query", query}, {"grad_out", grad_out}, {"lse", lse}});
  return shape;
}

}  // namespace sparsevision
