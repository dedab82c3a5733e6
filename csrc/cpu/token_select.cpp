// CPU kernel of sparsevision::select_tokens, per-sample top-k token selection.
//
// index[b] = [0, 1, .., num_prefix - 1, then num_prefix + i for the keep highest scores[b, i], i ascending]
//
// Tokens rank by score, highest first; equal scores rank by position, lower
// first (a stable descending sort); NaN ranks after every number. Each sample
// is one task: std::nth_element with that total order moves the keep
// best-ranked positions to the front, a byte mask marks them and one pass over
// the positions writes them in ascending order. The ranking is a total order,
// so the chosen set is unique and the result is bitwise identical at any
// thread count. Half and bfloat16 scores are compared in float32 (exactly).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../registration.h"
#include "../token_routing.h"

namespace sparsevision {
namespace {

constexpr int64_t kGrainWork = 16384;  // score comparisons one parallel chunk should at least do

// Whether token i ranks before token j: higher score, then lower position; NaN after every number.
template <typename compare_t>
bool ranks_before(const compare_t* scores, int64_t i, int64_t j) {
  const compare_t a = scores[i], b = scores[j];
  if (a > b) return true;
  if (a < b) return false;
  const bool a_is_nan = std::isnan(a), b_is_nan = std::isnan(b);
  if (a_is_nan != b_is_nan) return b_is_nan;
  return i < j;
}

// Writes the positions of the keep best-ranked of num_tokens scores, ascending, plus num_prefix, into out.
template <typename scalar_t, typename compare_t>
void select_row(const scalar_t* scores, int64_t num_tokens, int64_t keep, int64_t num_prefix, compare_t* row,
                int64_t* ranked, uint8_t* selected, int64_t* out) {
  if (keep < num_tokens) {
    std::copy_n(scores, num_tokens, row);
    std::iota(ranked, ranked + num_tokens, int64_t(0));
    std::nth_element(ranked, ranked + keep, ranked + num_tokens,
                     [row](int64_t i, int64_t j) { return ranks_before(row, i, j); });
    std::fill_n(selected, num_tokens, uint8_t(0));
    for (int64_t k = 0; k < keep; ++k) selected[ranked[k]] = 1;
  } else {
    std::fill_n(selected, num_tokens, uint8_t(1));
  }
  for (int64_t i = 0; i < num_tokens; ++i) {
    if (selected[i]) *out++ = num_prefix + i;
  }
}

at::Tensor select_tokens_cpu(const at::Tensor& scores_in, int64_t keep, int64_t num_prefix) {
  check_select_arguments(scores_in, keep, num_prefix);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t batch = scores.size(0), num_tokens = scores.size(1), count = num_prefix + keep;
  at::Tensor index = at::empty({batch, count}, scores.options().dtype(at::kLong));
  if (index.numel() == 0) return index;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "select_tokens_cpu", [&] {
    using compare_t = at::opmath_type<scalar_t>;
    const scalar_t* source = scores.data_ptr<scalar_t>();
    int64_t* target = index.data_ptr<int64_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(num_tokens, 1));
    at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      std::vector<compare_t> row(num_tokens);
      std::vector<int64_t> ranked(num_tokens);
      std::vector<uint8_t> selected(num_tokens);
      for (int64_t b = begin; b < end; ++b) {
        int64_t* out = target + b * count;
        std::iota(out, out + num_prefix, int64_t(0));
        select_row(source + b * num_tokens, num_tokens, keep, num_prefix, row.data(), ranked.data(),
                   selected.data(), out + num_prefix);
      }
    });
  });
  return index;
}

}  // namespace

void register_token_select_cpu(torch::Library& m) {
  m.impl("select_tokens", &select_tokens_cpu);
}

}  // namespace sparsevision
