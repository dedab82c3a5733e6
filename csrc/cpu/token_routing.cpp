// CPU kernels of sparsevision::gather_tokens and sparsevision::scatter_tokens.
//
// gather_tokens:  out[b, k, :] = tokens[b, index[b, k], :]
// scatter_tokens: out[b, n, :] = sum over k with index[b, k] == n of tokens[b, k, :]   (out is [B, N, C])
//
// Both are deterministic: scatter_tokens gives every (batch, channel block)
// to one thread, which adds the K rows in index order, so no two threads ever
// write the same output element and the summation order never depends on the
// thread count. Half and bfloat16 accumulate in float32.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../registration.h"
#include "../token_routing.h"

namespace sparsevision {
namespace {

constexpr int64_t kChannelBlock = 64;

void check_index_range(const at::Tensor& index, int64_t num_tokens, const char* op) {
  const int64_t* idx = index.data_ptr<int64_t>();
  const int64_t count = index.numel();
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < num_tokens, op, ": index ", idx[i], " at position ", i,
                      " is outside [0, ", num_tokens, ")");
  }
}

at::Tensor gather_tokens_cpu(const at::Tensor& tokens_in, const at::Tensor& index_in) {
  check_routing_arguments(tokens_in, index_in, "gather_tokens");
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), num_tokens = tokens.size(1), channels = tokens.size(2);
  const int64_t count = index.size(1);
  check_index_range(index, num_tokens, "gather_tokens");
  at::Tensor out = at::empty({batch, count, channels}, tokens.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "gather_tokens_cpu", [&] {
    const scalar_t* src = tokens.data_ptr<scalar_t>();
    const int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(channels, 1));
    at::parallel_for(0, batch * count, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / count;
        std::copy_n(src + (b * num_tokens + idx[row]) * channels, channels, dst + row * channels);
      }
    });
  });
  return out;
}

template <typename scalar_t, typename accumulate_t>
void scatter_add_rows(const scalar_t* src, const int64_t* idx, accumulate_t* dst, int64_t batch, int64_t count,
                      int64_t num_tokens, int64_t channels) {
  const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t c0 = (task % blocks) * kChannelBlock;
      const int64_t width = std::min(kChannelBlock, channels - c0);
      for (int64_t k = 0; k < count; ++k) {
        const scalar_t* row = src + (b * count + k) * channels + c0;
        accumulate_t* target = dst + (b * num_tokens + idx[b * count + k]) * channels + c0;
        for (int64_t c = 0; c < width; ++c) target[c] += static_cast<accumulate_t>(row[c]);
      }
    }
  });
}

at::Tensor scatter_tokens_cpu(const at::Tensor& tokens_in, const at::Tensor& index_in, int64_t num_tokens) {
  check_scatter_arguments(tokens_in, index_in, num_tokens);
  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t batch = tokens.size(0), count = tokens.size(1), channels = tokens.size(2);
  check_index_range(index, num_tokens, "scatter_tokens");
  // the sums, in float32 for half/bfloat16 inputs
  at::Tensor out =
      at::zeros({batch, num_tokens, channels}, tokens.options().dtype(at::toOpMathType(tokens.scalar_type())));
  if (tokens.numel() == 0) return out.to(tokens.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "scatter_tokens_cpu", [&] {
    using accumulate_t = at::opmath_type<scalar_t>;
    scatter_add_rows<scalar_t, accumulate_t>(tokens.data_ptr<scalar_t>(), index.data_ptr<int64_t>(),
                                             out.data_ptr<accumulate_t>(), batch, count, num_tokens, channels);
  });
  return out.to(tokens.scalar_type());
}

}  // namespace

void register_token_routing_cpu(torch::Library& m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("scatter_tokens", &scatter_tokens_cpu);
}

}  // namespace sparsevision
