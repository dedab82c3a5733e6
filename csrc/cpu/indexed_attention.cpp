// CPU kernels of sparsevision::indexed_attention and indexed_attention_backward.
//
// Each query attends to the keys its row of `index` names ([Nq, L] int32, -1 = empty slot), with an optional
// additive bias per (query, head, slot) or per (head, slot) for every query. One thread owns a query: it scores the
// query's occupied slots, takes the softmax against their maximum (exponentials vectorised, exponential.h) and writes
// the output and the log-sum-exp; no [queries, keys] matrix and no gathered copy of the keys exists. Query, key and
// value rows may be strided (views of one projection). The backward recomputes the probabilities from the
// log-sum-exp. Query gradients are summed per query; key and value gradients per key, over the slots naming that key
// in (query, slot) order, found by a stable counting sort of the index. So no float atomics, and the same input gives
// the same bits at any thread count. Half and bfloat16 accumulate in float32.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "../indexed_attention.h"
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

// The lanes' sum as a tree: ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)), the order sum_lanes_of_8 keeps.
inline float sum_lanes(Lanes8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

// The lane sums of eight vectors at once, each in sum_lanes' order (so the same bits): three shuffle-and-add steps.
inline Lanes8 sum_lanes_of_8(const Lanes8* v) {
  Lanes8 pairs[4], quads[2];
  for (int i = 0; i < 4; ++i) {
    pairs[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {
    quads[i] = __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  return __builtin_shufflevector(quads[0], quads[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quads[0], quads[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// Lane-wise partial sums of a . b (length a multiple of 8).
inline Lanes8 lane_products(const float* a, const float* b, int64_t length) {
  Lanes8 sums = {};
  for (int64_t d = 0; d < length; d += kLanes8) sums += load8(a + d) * load8(b + d);
  return sums;
}

template <typename scalar_t, typename acc_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t length) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (length % kLanes8 == 0) return sum_lanes(lane_products(a, b, length));
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

// sums[d] = sum over c, in order, of weights[c] * table[rows[c] * stride + offset + d], d < length. Float rows of 8 to
// 64 lanes keep the sums in registers (same summation order as the loop through memory).
template <int Vectors>
inline void weighted_float_rows(float* sums, const float* weights, const int32_t* rows, int64_t count,
                                const float* table, int64_t stride, int64_t offset) {
  Lanes8 acc[Vectors] = {};
  for (int64_t c = 0; c < count; ++c) {
    const float* row = table + rows[c] * stride + offset;
    for (int j = 0; j < Vectors; ++j) acc[j] += weights[c] * load8(row + j * kLanes8);
  }
  std::memcpy(sums, acc, sizeof(acc));
}

template <typename scalar_t, typename acc_t>
inline void weighted_rows(acc_t* sums, const acc_t* weights, const int32_t* rows, int64_t count,
                          const scalar_t* table, int64_t stride, int64_t offset, int64_t length) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (length) {
      case 8: return weighted_float_rows<1>(sums, weights, rows, count, table, stride, offset);
      case 16: return weighted_float_rows<2>(sums, weights, rows, count, table, stride, offset);
      case 32: return weighted_float_rows<4>(sums, weights, rows, count, table, stride, offset);
      case 64: return weighted_float_rows<8>(sums, weights, rows, count, table, stride, offset);
      default: break;
    }
  }
  std::fill(sums, sums + length, acc_t(0));
  for (int64_t c = 0; c < count; ++c) add_scaled(sums, weights[c], table + rows[c] * stride + offset, length);
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

// dots[c] = a . table[rows[c] * stride + offset ...] (length entries each), for c < count.
template <typename scalar_t, typename acc_t>
inline void row_dots(const scalar_t* a, const scalar_t* table, const int32_t* rows, int64_t count, int64_t stride,
                     int64_t offset, int64_t length, acc_t* dots) {
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (length % kLanes8 == 0) {   // eight rows at a time, their lane sums reduced together
      for (; c + kLanes8 <= count; c += kLanes8) {
        Lanes8 products[kLanes8];
        for (int j = 0; j < kLanes8; ++j) products[j] = lane_products(a, table + rows[c + j] * stride + offset, length);
        const Lanes8 sums = sum_lanes_of_8(products);
        std::memcpy(dots + c, &sums, sizeof(sums));
      }
    }
  }
  for (; c < count; ++c) dots[c] = dot<scalar_t, acc_t>(a, table + rows[c] * stride + offset, length);
}

// scores[c] = scale * q . key[rows[c]] + bias[positions[c]] for one head; returns their maximum.
template <typename scalar_t, typename acc_t>
inline acc_t score(const scalar_t* q, const scalar_t* key, const int32_t* rows, const int64_t* positions,
                   int64_t count, const scalar_t* bias, const AttentionShape& shape, int64_t head, acc_t scale,
                   acc_t* scores) {
  row_dots(q, key, rows, count, shape.key_stride, head * shape.head_dim, shape.head_dim, scores);
  acc_t largest = -std::numeric_limits<acc_t>::infinity();
  for (int64_t c = 0; c < count; ++c) {
    scores[c] *= scale;
    if (bias) scores[c] += acc_t(bias[positions[c]]);
    largest = std::max(largest, scores[c]);
  }
  return largest;
}

// One thread's view of a query: its occupied slots (key rows and slot positions) and their scores per head.
template <typename scalar_t, typename acc_t>
struct QuerySlots {
  const AttentionShape& shape;
  const scalar_t *query, *key, *bias;
  std::vector<int32_t> rows;
  std::vector<int64_t> positions;
  int64_t count = 0;

  QuerySlots(const AttentionShape& shape_in, const scalar_t* query_in, const scalar_t* key_in,
             const scalar_t* bias_in)
      : shape(shape_in), query(query_in), key(key_in), bias(bias_in), rows(shape_in.slots),
        positions(shape_in.slots) {}

  void load(const int32_t* index, int64_t q) {
    count = occupied_slots(index + q * shape.slots, shape.slots, rows.data(), positions.data());
  }

  // scores[c] for head h of query q (after load(index, q)); returns their maximum.
  acc_t scores(int64_t q, int64_t h, acc_t scale, acc_t* out) const {
    return score(query + q * shape.query_stride + h * shape.head_dim, key, rows.data(), positions.data(), count,
                 bias ? bias + shape.bias_offset(q, h) : nullptr, shape, h, scale, out);
  }
};

template <typename scalar_t>
SV_VECTOR_CLONES void attend(const scalar_t* query, const scalar_t* key, const scalar_t* value, const int32_t* index,
                             const scalar_t* bias, const AttentionShape& shape, double scale_in, scalar_t* out,
                             at::opmath_type<scalar_t>* lse, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_in);
  std::vector<acc_t> weights(shape.slots), sums(shape.value_dim);
  QuerySlots<scalar_t, acc_t> slots(shape, query, key, bias);
  const int32_t* rows = slots.rows.data();
  for (int64_t q = begin; q < end; ++q) {
    slots.load(index, q);
    const int64_t count = slots.count;
    for (int64_t h = 0; h < shape.heads; ++h) {
      const int64_t row = q * shape.heads + h;
      const acc_t largest = slots.scores(q, h, scale, weights.data());
      for (int64_t c = 0; c < count; ++c) weights[c] = exp_nonpositive(weights[c] - largest);  // vectorised
      acc_t total = 0;
      for (int64_t c = 0; c < count; ++c) total += weights[c];
      weighted_rows(sums.data(), weights.data(), rows, count, value, shape.value_stride, h * shape.value_dim,
                    shape.value_dim);
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
  AttentionShape shape = check_arguments(query_in, key_in, value_in, index_in, bias_in, "indexed_attention");
  const at::Tensor query = packed_rows(query_in), key = packed_rows(key_in), value = packed_rows(value_in);
  shape.set_row_strides(query, key, value);
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
  QuerySlots<scalar_t, acc_t> slots(shape, query, key, bias);
  const int32_t* rows = slots.rows.data();
  const int64_t* positions = slots.positions.data();
  for (int64_t q = begin; q < end; ++q) {
    slots.load(index, q);
    const int64_t count = slots.count;
    for (int64_t h = 0; h < shape.heads; ++h) {
      const int64_t row = q * shape.heads + h;
      slots.scores(q, h, scale, p.data());
      for (int64_t c = 0; c < count; ++c) p[c] = exp_nonpositive(p[c] - lse[row]);  // vectorised
      const scalar_t* go = grad_out + row * shape.value_dim;
      row_dots(go, value, rows, count, shape.value_stride, h * shape.value_dim, shape.value_dim, dp.data());
      acc_t delta = 0;   // sum_c p_c dp_c
      for (int64_t c = 0; c < count; ++c) delta += p[c] * dp[c];
      acc_t* slot_probs = probs + row * shape.slots;
      acc_t* slot_grads = grad_scores + row * shape.slots;
      std::fill(slot_probs, slot_probs + shape.slots, acc_t(0));
      std::fill(slot_grads, slot_grads + shape.slots, acc_t(0));
      for (int64_t c = 0; c < count; ++c) {
        dp[c] = p[c] * (dp[c] - delta);   // the score gradient
        slot_probs[positions[c]] = p[c];
        slot_grads[positions[c]] = dp[c];
      }
      weighted_rows(sums.data(), dp.data(), rows, count, key, shape.key_stride, h * shape.head_dim,
                    shape.head_dim);
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
                   query + q * shape.query_stride + h * shape.head_dim, shape.head_dim);
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
  AttentionShape shape = check_backward_arguments(grad_out_in, query_in, key_in, value_in, index_in, bias_in, lse_in);
  const at::Tensor query = packed_rows(query_in), key = packed_rows(key_in), value = packed_rows(value_in);
  shape.set_row_strides(query, key, value);
  const at::Tensor grad_out = grad_out_in.contiguous(), index = index_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  check_index_range(index, shape.keys, op);
  const auto acc_dtype = at::toOpMathType(query.scalar_type());
  at::Tensor probs = at::empty({shape.queries, shape.heads, shape.slots}, query.options().dtype(acc_dtype));
  at::Tensor grad_scores = at::empty_like(probs);
  at::Tensor grad_query = at::empty({shape.queries, shape.heads, shape.head_dim}, query.options());
  at::Tensor grad_key = at::empty({shape.keys, shape.heads, shape.head_dim}, query.options());
  at::Tensor grad_value = at::empty({shape.keys, shape.heads, shape.value_dim}, query.options());
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
