// CPU kernels of sparsevision::indexed_attention and indexed_attention_backward.
//
// Each query attends to the keys its row of `index` names ([Nq, L] int32, -1 = empty slot), with an optional
// additive bias per (query, head, slot) or per (head, slot) for every query. One thread owns a query: it scores the query's slots, takes the softmax
// with the running maximum and writes the output and the log-sum-exp; no [queries, keys] matrix and no gathered copy
// of the keys exists. The backward recomputes the probabilities from the log-sum-exp. Query gradients are summed per
// query; key and value gradients per key, over the slots naming that key in (query, slot) order, found by a stable
// counting sort of the index. So no float atomics, and the same input gives the same bits at any thread count.
// Half and bfloat16 accumulate in float32.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "../coordinates.h"
#include "../devices.h"
#include "../registration.h"
#include "exponential.h"
#include "vectors.h"

namespace sparsevision {
namespace {

// 8 float lanes: float rows whose length is a multiple of 8 (head dims 16, 32, 64, ...) take explicit vectors;
// other dtypes and lengths take the scalar loops. Either way the summation order is fixed by the length.
typedef float Lanes8 __attribute__((vector_size(32)));
constexpr int kLanes8 = 8;

inline Lanes8 load8(const float* source) {
  Lanes8 value;
  std::memcpy(&value, source, sizeof(value));
  return value;
}

inline float sum_lanes(Lanes8 v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

template <typename scalar_t, typename acc_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t length) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (length % kLanes8 == 0) {
      Lanes8 sums = {};
      for (int64_t d = 0; d < length; d += kLanes8) sums += load8(a + d) * load8(b + d);
      return sum_lanes(sums);
    }
  }
  acc_t sum = 0;
  for (int64_t d = 0; d < length; ++d) sum += acc_t(a[d]) * acc_t(b[d]);
  return sum;
}

// target[d] += weight * source[d]
template <typename scalar_t, typename acc_t>
inline void add_scaled(acc_t* target, acc_t weight, const scalar_t* source, int64_t length) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (length % kLanes8 == 0) {
      for (int64_t d = 0; d < length; d += kLanes8) {
        const Lanes8 sum = load8(target + d) + weight * load8(source + d);
        std::memcpy(target + d, &sum, sizeof(sum));
      }
      return;
    }
  }
  for (int64_t d = 0; d < length; ++d) target[d] += weight * acc_t(source[d]);
}

struct AttentionShape {
  int64_t queries, keys, heads, head_dim, value_dim, slots;
  bool bias_per_query;

  // Where the bias of (query, head) starts: biases are [queries or 1, heads, slots].
  int64_t bias_offset(int64_t query, int64_t head) const {
    return ((bias_per_query ? query : 0) * heads + head) * slots;
  }
};

AttentionShape check_arguments(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                               const at::Tensor& index, const std::optional<at::Tensor>& bias, const char* op) {
  TORCH_CHECK_VALUE(query.dim() == 3 && key.dim() == 3 && value.dim() == 3, op,
                    ": query, key and value must be [rows, heads, head_dim], got ", query.sizes(), ", ", key.sizes(),
                    " and ", value.sizes());
  const AttentionShape shape{query.size(0), key.size(0),  query.size(1),
                             query.size(2), value.size(2), index.size(1),
                             bias && bias->size(0) != 1};
  TORCH_CHECK_VALUE(key.size(1) == shape.heads && value.size(1) == shape.heads && key.size(2) == shape.head_dim &&
                        value.size(0) == shape.keys, op, ": key ", key.sizes(), " and value ", value.sizes(),
                    " do not fit query ", query.sizes(), " (same heads and head_dim, one value row per key)");
  TORCH_CHECK_VALUE(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(), op,
                    ": query, key and value must share a dtype, got ", query.scalar_type(), ", ", key.scalar_type(),
                    " and ", value.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2 && index.scalar_type() == at::kInt && index.size(0) == shape.queries, op,
                    ": index must be int32 [queries, slots] with one row per query, got ", index.scalar_type(), " ",
                    index.sizes());
  if (bias) {
    TORCH_CHECK_VALUE(bias->scalar_type() == query.scalar_type(), op, ": bias must have the dtype of query");
    TORCH_CHECK_VALUE(bias->dim() == 3 && (bias->size(0) == shape.queries || bias->size(0) == 1) &&
                          bias->size(1) == shape.heads && bias->size(2) == shape.slots, op,
                      ": bias must be [queries or 1, heads, slots] = [", shape.queries, " or 1, ", shape.heads, ", ",
                      shape.slots, "], got ", bias->sizes());
  }
  check_row_count(shape.keys, "key");
  return shape;
}

void check_index_range(const at::Tensor& index, int64_t keys, const char* op) {
  const int32_t* entries = index.data_ptr<int32_t>();
  for (int64_t i = 0; i < index.numel(); ++i) {
    TORCH_CHECK_VALUE(entries[i] >= -1 && entries[i] < keys, op, ": index entries must be -1 (empty) or rows of key "
                      "in [0, ", keys, "), got ", entries[i], " at query ", i / index.size(1), ", slot ",
                      i % index.size(1));
  }
}

// A query's non-empty slots: their key rows and slot positions, in slot order; returns how many.
int64_t occupied_slots(const int32_t* index, int64_t slots, int32_t* rows, int64_t* positions) {
  int64_t count = 0;
  for (int64_t l = 0; l < slots; ++l) {
    if (index[l] < 0) continue;
    rows[count] = index[l];
    positions[count++] = l;
  }
  return count;
}

// scores[c] = scale * q . key[rows[c]] + bias[positions[c]] for one head; returns their maximum.
template <typename scalar_t, typename acc_t>
inline acc_t score(const scalar_t* q, const scalar_t* key, const int32_t* rows, const int64_t* positions,
                   int64_t count, const scalar_t* bias, const AttentionShape& shape, int64_t head, acc_t scale,
                   acc_t* scores) {
  acc_t largest = -std::numeric_limits<acc_t>::infinity();
  const int64_t key_stride = shape.heads * shape.head_dim;
  for (int64_t c = 0; c < count; ++c) {
    scores[c] = scale * dot<scalar_t, acc_t>(q, key + rows[c] * key_stride + head * shape.head_dim, shape.head_dim);
    if (bias) scores[c] += acc_t(bias[positions[c]]);
    largest = std::max(largest, scores[c]);
  }
  return largest;
}

template <typename scalar_t>
SV_VECTOR_CLONES void attend(const scalar_t* query, const scalar_t* key, const scalar_t* value, const int32_t* index,
                             const scalar_t* bias, const AttentionShape& shape, double scale_in, scalar_t* out,
                             at::opmath_type<scalar_t>* lse, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_in);
  std::vector<acc_t> weights(shape.slots), sums(shape.value_dim);
  std::vector<int32_t> rows(shape.slots);
  std::vector<int64_t> positions(shape.slots);
  const int64_t value_stride = shape.heads * shape.value_dim;
  for (int64_t q = begin; q < end; ++q) {
    const int64_t count = occupied_slots(index + q * shape.slots, shape.slots, rows.data(), positions.data());
    for (int64_t h = 0; h < shape.heads; ++h) {
      const int64_t row = q * shape.heads + h;
      const acc_t largest = score(query + row * shape.head_dim, key, rows.data(), positions.data(), count,
                                  bias ? bias + shape.bias_offset(q, h) : nullptr, shape, h, scale,
                                  weights.data());
      for (int64_t c = 0; c < count; ++c) weights[c] = exp_nonpositive(weights[c] - largest);  // vectorised
      acc_t total = 0;
      for (int64_t c = 0; c < count; ++c) total += weights[c];
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t c = 0; c < count; ++c) {
        add_scaled(sums.data(), weights[c], value + rows[c] * value_stride + h * shape.value_dim, shape.value_dim);
      }
      scalar_t* target = out + row * shape.value_dim;
      const acc_t inverse = count ? acc_t(1) / total : acc_t(0);
      for (int64_t d = 0; d < shape.value_dim; ++d) target[d] = static_cast<scalar_t>(sums[d] * inverse);
      lse[row] = count ? largest + std::log(total) : -std::numeric_limits<acc_t>::infinity();
    }
  }
}

std::tuple<at::Tensor, at::Tensor> indexed_attention_cpu(const at::Tensor& query_in, const at::Tensor& key_in,
                                                         const at::Tensor& value_in, const at::Tensor& index_in,
                                                         const std::optional<at::Tensor>& bias_in, double scale) {
  const AttentionShape shape = check_arguments(query_in, key_in, value_in, index_in, bias_in, "indexed_attention");
  check_same_device("indexed_attention", {{"query", query_in}, {"key", key_in}, {"value", value_in},
                                          {"index", index_in}});
  const at::Tensor query = query_in.contiguous(), key = key_in.contiguous(), value = value_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  check_index_range(index, shape.keys, "indexed_attention");
  at::Tensor out = at::empty({shape.queries, shape.heads, shape.value_dim}, query.options());
  const auto lse_dtype = at::toOpMathType(query.scalar_type());
  at::Tensor lse = at::empty({shape.queries, shape.heads}, query.options().dtype(lse_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "indexed_attention_cpu", [&] {
    at::parallel_for(0, shape.queries, 16, [&](int64_t begin, int64_t end) {
      attend<scalar_t>(query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
                       index.data_ptr<int32_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, shape, scale,
                       out.data_ptr<scalar_t>(), lse.data_ptr<at::opmath_type<scalar_t>>(), begin, end);
    });
  });
  return {out, lse};
}

// Per query: the probabilities and score gradients of its slots (kept for the per-key pass) and its query gradient.
template <typename scalar_t>
SV_VECTOR_CLONES void query_gradients(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key,
                                      const scalar_t* value, const int32_t* index, const scalar_t* bias,
                                      const at::opmath_type<scalar_t>* lse, const AttentionShape& shape,
                                      double scale_in, scalar_t* grad_query, at::opmath_type<scalar_t>* probs,
                                      at::opmath_type<scalar_t>* grad_scores, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_in);
  std::vector<acc_t> p(shape.slots), dp(shape.slots), sums(shape.head_dim);
  std::vector<int32_t> rows(shape.slots);
  std::vector<int64_t> positions(shape.slots);
  const int64_t key_stride = shape.heads * shape.head_dim, value_stride = shape.heads * shape.value_dim;
  for (int64_t q = begin; q < end; ++q) {
    const int64_t count = occupied_slots(index + q * shape.slots, shape.slots, rows.data(), positions.data());
    for (int64_t h = 0; h < shape.heads; ++h) {
      const int64_t row = q * shape.heads + h;
      score(query + row * shape.head_dim, key, rows.data(), positions.data(), count,
            bias ? bias + shape.bias_offset(q, h) : nullptr, shape, h, scale, p.data());
      for (int64_t c = 0; c < count; ++c) p[c] = exp_nonpositive(p[c] - lse[row]);  // vectorised
      const scalar_t* go = grad_out + row * shape.value_dim;
      acc_t delta = 0;   // sum_c p_c dp_c
      for (int64_t c = 0; c < count; ++c) {
        dp[c] = dot<scalar_t, acc_t>(go, value + rows[c] * value_stride + h * shape.value_dim, shape.value_dim);
        delta += p[c] * dp[c];
      }
      acc_t* slot_probs = probs + row * shape.slots;
      acc_t* slot_grads = grad_scores + row * shape.slots;
      std::fill(slot_probs, slot_probs + shape.slots, acc_t(0));
      std::fill(slot_grads, slot_grads + shape.slots, acc_t(0));
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t c = 0; c < count; ++c) {
        const acc_t ds = p[c] * (dp[c] - delta);
        slot_probs[positions[c]] = p[c];
        slot_grads[positions[c]] = ds;
        add_scaled(sums.data(), ds, key + rows[c] * key_stride + h * shape.head_dim, shape.head_dim);
      }
      scalar_t* gq = grad_query + row * shape.head_dim;
      for (int64_t d = 0; d < shape.head_dim; ++d) gq[d] = static_cast<scalar_t>(scale * sums[d]);
    }
  }
}

// Per key: the sums over the slots naming it (`slots_of[offsets[n] .. offsets[n + 1])`, flat (query, slot)
// positions in increasing order) of the key and value gradients.
template <typename scalar_t>
SV_VECTOR_CLONES void key_gradients(const scalar_t* grad_out, const scalar_t* query,
                                    const at::opmath_type<scalar_t>* probs,
                                    const at::opmath_type<scalar_t>* grad_scores, const int64_t* offsets,
                                    const int64_t* slots_of, const AttentionShape& shape, double scale_in,
                                    scalar_t* grad_key, scalar_t* grad_value, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_in);
  const int64_t key_width = shape.heads * shape.head_dim, value_width = shape.heads * shape.value_dim;
  std::vector<acc_t> key_sums(key_width), value_sums(value_width);
  for (int64_t n = begin; n < end; ++n) {
    std::fill(key_sums.begin(), key_sums.end(), acc_t(0));
    std::fill(value_sums.begin(), value_sums.end(), acc_t(0));
    for (int64_t i = offsets[n]; i < offsets[n + 1]; ++i) {
      const int64_t q = slots_of[i] / shape.slots, l = slots_of[i] % shape.slots;
      for (int64_t h = 0; h < shape.heads; ++h) {
        const int64_t row = q * shape.heads + h;
        add_scaled(key_sums.data() + h * shape.head_dim, grad_scores[row * shape.slots + l],
                   query + row * shape.head_dim, shape.head_dim);
        add_scaled(value_sums.data() + h * shape.value_dim, probs[row * shape.slots + l],
                   grad_out + row * shape.value_dim, shape.value_dim);
      }
    }
    scalar_t* gk = grad_key + n * key_width;
    scalar_t* gv = grad_value + n * value_width;
    for (int64_t d = 0; d < key_width; ++d) gk[d] = static_cast<scalar_t>(scale * key_sums[d]);
    for (int64_t d = 0; d < value_width; ++d) gv[d] = static_cast<scalar_t>(value_sums[d]);
  }
}

// [1, heads, slots]: the sums of [queries, heads, slots] over the queries, each column by one thread in query order.
at::Tensor sum_over_queries(const at::Tensor& rows) {
  const int64_t queries = rows.size(0), columns = rows.size(1) * rows.size(2);
  at::Tensor sums = at::zeros({1, rows.size(1), rows.size(2)}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "sum_over_queries", [&] {
    const scalar_t* source = rows.data_ptr<scalar_t>();
    scalar_t* target = sums.data_ptr<scalar_t>();
    at::parallel_for(0, columns, 8, [&](int64_t begin, int64_t end) {
      for (int64_t q = 0; q < queries; ++q) {
        for (int64_t j = begin; j < end; ++j) target[j] += source[q * columns + j];
      }
    });
  });
  return sums;
}

// A stable counting sort of the flat slot positions by the key they name: offsets [keys + 1] and positions.
std::pair<std::vector<int64_t>, std::vector<int64_t>> slots_by_key(const at::Tensor& index, int64_t keys) {
  const int32_t* entries = index.data_ptr<int32_t>();
  std::vector<int64_t> offsets(keys + 1, 0);
  for (int64_t i = 0; i < index.numel(); ++i) {
    if (entries[i] >= 0) ++offsets[entries[i] + 1];
  }
  for (int64_t n = 0; n < keys; ++n) offsets[n + 1] += offsets[n];
  std::vector<int64_t> positions(offsets[keys]), next(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < index.numel(); ++i) {
    if (entries[i] >= 0) positions[next[entries[i]]++] = i;
  }
  return {offsets, positions};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> indexed_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
    const at::Tensor& index_in, const std::optional<at::Tensor>& bias_in, const at::Tensor& /*out*/,
    const at::Tensor& lse_in, double scale) {
  const char* op = "indexed_attention_backward";
  const AttentionShape shape = check_arguments(query_in, key_in, value_in, index_in, bias_in, op);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == at::IntArrayRef({shape.queries, shape.heads, shape.value_dim}) &&
                        lse_in.sizes() == at::IntArrayRef({shape.queries, shape.heads}), op,
                    ": grad_out must be [queries, heads, value_dim] and lse [queries, heads]");
  TORCH_CHECK_VALUE(grad_out_in.scalar_type() == query_in.scalar_type() &&
                        lse_in.scalar_type() == at::toOpMathType(query_in.scalar_type()), op,
                    ": grad_out must have the dtype of query, lse its accumulation dtype");
  check_same_device(op, {{"grad_out", grad_out_in}, {"query", query_in}, {"key", key_in}, {"value", value_in},
                         {"index", index_in}, {"lse", lse_in}});
  const at::Tensor grad_out = grad_out_in.contiguous(), query = query_in.contiguous(), key = key_in.contiguous();
  const at::Tensor value = value_in.contiguous(), index = index_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  check_index_range(index, shape.keys, op);
  const auto acc_dtype = at::toOpMathType(query.scalar_type());
  at::Tensor probs = at::empty({shape.queries, shape.heads, shape.slots}, query.options().dtype(acc_dtype));
  at::Tensor grad_scores = at::empty_like(probs);
  at::Tensor grad_query = at::empty_like(query), grad_key = at::empty_like(key), grad_value = at::empty_like(value);
  const auto [offsets, positions] = slots_by_key(index, shape.keys);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "indexed_attention_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, shape.queries, 16, [&](int64_t begin, int64_t end) {
      query_gradients<scalar_t>(grad_out.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(),
                                value.data_ptr<scalar_t>(), index.data_ptr<int32_t>(),
                                bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, lse.data_ptr<acc_t>(), shape,
                                scale, grad_query.data_ptr<scalar_t>(), probs.data_ptr<acc_t>(),
                                grad_scores.data_ptr<acc_t>(), begin, end);
    });
    at::parallel_for(0, shape.keys, 16, [&](int64_t begin, int64_t end) {
      key_gradients<scalar_t>(grad_out.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), probs.data_ptr<acc_t>(),
                              grad_scores.data_ptr<acc_t>(), offsets.data(), positions.data(), shape, scale,
                              grad_key.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), begin, end);
    });
  });
  at::Tensor grad_bias = !bias.defined()        ? query.new_empty({0})
                         : shape.bias_per_query ? grad_scores.to(query.scalar_type())
                                                : sum_over_queries(grad_scores).to(query.scalar_type());
  return {grad_query, grad_key, grad_value, grad_bias};
}

}  // namespace

void register_indexed_attention_cpu(torch::Library& m) {
  m.impl("indexed_attention", &indexed_attention_cpu);
  m.impl("indexed_attention_backward", &indexed_attention_backward_cpu);
}

}  // namespace sparsevision
