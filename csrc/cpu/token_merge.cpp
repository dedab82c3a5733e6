// CPU kernel of sparsevision::merge_tokens, the size-weighted token merge of ToMe.
//
// merged_sizes[b, j] = sum over i with index[b, i] == j of sizes[b, i]
// merged[b, j, :]    = sum over the same i of sizes[b, i] * tokens[b, i, :], divided by merged_sizes[b, j]
// (slots no token maps to hold zeros and size 0).
//
// Two passes. First, per sample, a counting sort of index gives every slot the
// list of its tokens in ascending order (CSR: slot_offsets, tokens_by_slot) and
// sums merged_sizes in that order. Then every (sample, slot, channel block) is
// one task: one thread walks the slot's list, adds the rounded products
// sizes * tokens in list order and divides once. No two threads write the same
// element and no order depends on the thread count, so the result is bitwise
// identical at any thread count, and equal to the index_add reference
// (products rounded, then added in token order). Half and bfloat16 accumulate
// in float32 and round once.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../registration.h"
#include "../token_routing.h"

namespace sparsevision {
namespace {

constexpr int64_t kChannelBlock = 512;  // channels per task: its sums fit in L1 (2 KB of float)
constexpr int64_t kGrainWork = 32768;   // multiply-adds (or token visits) one parallel chunk should at least do

// AVX2 but no FMA: products stay rounded before the add, as in the reference.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SV_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SV_AVX2_CLONES
#endif

// Slot lists of one sample: the tokens of slot j are tokens_by_slot[slot_offsets[j] .. slot_offsets[j + 1]),
// ascending. Also sums merged_sizes[j] in that order and rejects index values outside [0, num_out).
template <typename scalar_t, typename accumulate_t>
void build_slot_lists(const int64_t* index, const scalar_t* sizes, int64_t num_tokens, int64_t num_out,
                      int64_t batch_position, int64_t* slot_offsets, int64_t* tokens_by_slot,
                      accumulate_t* merged_sizes) {
  std::fill_n(slot_offsets, num_out + 1, 0);
  for (int64_t i = 0; i < num_tokens; ++i) {
    const int64_t slot = index[i];
    TORCH_CHECK_VALUE(slot >= 0 && slot < num_out, "merge_tokens: index ", slot, " at position ",
                      batch_position * num_tokens + i, " is outside [0, ", num_out, ")");
    ++slot_offsets[slot + 1];
    merged_sizes[slot] += static_cast<accumulate_t>(sizes[i]);
  }
  // slot_offsets[j + 1] becomes the start of slot j; placing each token advances it to the end of slot j,
  // which is the start of slot j + 1.
  int64_t start = 0;
  for (int64_t j = 0; j < num_out; ++j) {
    const int64_t count = slot_offsets[j + 1];
    slot_offsets[j + 1] = start;
    start += count;
  }
  for (int64_t i = 0; i < num_tokens; ++i) tokens_by_slot[slot_offsets[index[i] + 1]++] = i;
}

template <typename scalar_t, typename accumulate_t>
struct MergeProblem {
  const scalar_t* tokens;
  const scalar_t* sizes;
  const int64_t* slot_offsets;    // [B, M + 1]
  const int64_t* tokens_by_slot;  // [B, N]
  const accumulate_t* merged_sizes;
  scalar_t* merged;
  int64_t num_tokens, num_out, channels, blocks;
};

// Tasks [begin, end) of (sample, slot, channel block): add sizes * tokens over the slot's list, divide once.
template <typename scalar_t, typename accumulate_t>
SV_AVX2_CLONES void merge_slot_range(const MergeProblem<scalar_t, accumulate_t>* problem, int64_t begin,
                                     int64_t end) {
  const int64_t num_tokens = problem->num_tokens, num_out = problem->num_out, channels = problem->channels;
  accumulate_t sum[kChannelBlock];
  for (int64_t task = begin; task < end; ++task) {
    const int64_t slot = task / problem->blocks;  // b * num_out + j
    const int64_t b = slot / num_out;
    const int64_t c0 = (task % problem->blocks) * kChannelBlock;
    const int64_t width = std::min(kChannelBlock, channels - c0);
    const int64_t* offsets = problem->slot_offsets + b * (num_out + 1) + slot % num_out;
    const int64_t* members = problem->tokens_by_slot + b * num_tokens;
    std::fill_n(sum, width, accumulate_t(0));
    for (int64_t position = offsets[0]; position < offsets[1]; ++position) {
      const int64_t token = b * num_tokens + members[position];
      const accumulate_t weight = static_cast<accumulate_t>(problem->sizes[token]);
      const scalar_t* row = problem->tokens + token * channels + c0;
      for (int64_t c = 0; c < width; ++c) sum[c] += weight * static_cast<accumulate_t>(row[c]);
    }
    // An empty slot has sum 0 and size 0; dividing by 1 keeps it 0.
    const accumulate_t size = problem->merged_sizes[slot];
    const accumulate_t divisor = size != accumulate_t(0) ? size : accumulate_t(1);
    scalar_t* target = problem->merged + slot * channels + c0;
    for (int64_t c = 0; c < width; ++c) target[c] = static_cast<scalar_t>(sum[c] / divisor);
  }
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_cpu(const at::Tensor& tokens_in, const at::Tensor& sizes_in,
                                                    const at::Tensor& index_in, int64_t num_out) {
  check_merge_arguments(tokens_in, sizes_in, index_in, num_out);
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor sizes = sizes_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), num_tokens = tokens.size(1), channels = tokens.size(2);
  at::Tensor merged = at::empty({batch, num_out, channels}, tokens.options());
  at::Tensor merged_sizes = at::zeros({batch, num_out}, sizes.options().dtype(at::toOpMathType(sizes.scalar_type())));
  at::Tensor slot_offsets = at::empty({batch, num_out + 1}, index.options());
  at::Tensor tokens_by_slot = at::empty({batch, num_tokens}, index.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "merge_tokens_cpu", [&] {
    using accumulate_t = at::opmath_type<scalar_t>;
    const int64_t* idx = index.data_ptr<int64_t>();
    const scalar_t* weights = sizes.data_ptr<scalar_t>();
    int64_t* offsets = slot_offsets.data_ptr<int64_t>();
    int64_t* order = tokens_by_slot.data_ptr<int64_t>();
    accumulate_t* sums = merged_sizes.data_ptr<accumulate_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(num_tokens + num_out, 1));
    at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        build_slot_lists(idx + b * num_tokens, weights + b * num_tokens, num_tokens, num_out, b,
                         offsets + b * (num_out + 1), order + b * num_tokens, sums + b * num_out);
      }
    });
    if (merged.numel() == 0) return;
    const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    const MergeProblem<scalar_t, accumulate_t> problem{tokens.data_ptr<scalar_t>(), weights, offsets, order, sums,
                                                       merged.data_ptr<scalar_t>(), num_tokens, num_out, channels,
                                                       blocks};
    const int64_t tokens_per_slot = std::max<int64_t>(1, num_tokens / num_out);
    const int64_t task_work = std::min(channels, kChannelBlock) * tokens_per_slot;
    at::parallel_for(0, batch * num_out * blocks, std::max<int64_t>(1, kGrainWork / task_work),
                     [&](int64_t begin, int64_t end) { merge_slot_range(&problem, begin, end); });
  });
  return {merged, merged_sizes.to(sizes.scalar_type())};
}

}  // namespace

void register_token_merge_cpu(torch::Library& m) {
  m.impl("merge_tokens", &merge_tokens_cpu);
}

}  // namespace sparsevision
