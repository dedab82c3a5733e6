// CPU kernels of sparsevision::row_batch_norm and sparsevision::row_batch_norm_backward: training-mode batch norm
// over the rows of [N, C] (the sites of a sparse tensor). Forward reads the rows twice (statistics, output), backward
// reads them and the output gradient twice (sums, input gradient); statistics and arithmetic are in double. A residual
// block's tail can be fused: the forward adds a residual and clamps (ReLU) as it writes, the backward masks the
// output gradient with the fused output (relu_out), which saves the separate add and ReLU passes and the ReLU's
// gradient buffer.
//
// Statistics come from fixed chunks of kChunkRows rows: each chunk's column sums (and, forward, its sum of squared
// deviations from its own mean, while the chunk is still in cache) in row order, then the chunks combined in chunk
// order (Chan et al.'s pairwise update for the variance). The split does not depend on the thread count, so results
// are bitwise the same at any thread count; element-wise passes compute each element on its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../registration.h"
#include "recycled_buffers.h"
#include "vectors.h"

namespace sparsevision {
namespace {

constexpr int64_t kChunkRows = 256;

// sums[c] = sum of x[n, c] and squares[c] = sum of (x[n, c] - chunk mean)^2 over rows [first, last).
template <typename scalar_t>
SV_VECTOR_CLONES void chunk_moments(const scalar_t* x, int64_t first, int64_t last, int64_t columns, double* sums,
                                    double* squares) {
  for (int64_t n = first; n < last; ++n) {
    for (int64_t c = 0; c < columns; ++c) sums[c] += static_cast<double>(x[n * columns + c]);
  }
  const double rows = double(last - first);
  for (int64_t n = first; n < last; ++n) {
    for (int64_t c = 0; c < columns; ++c) {
      const double deviation = static_cast<double>(x[n * columns + c]) - sums[c] / rows;
      squares[c] += deviation * deviation;
    }
  }
}

// The output gradient g[i], or +0 where a fused ReLU's output relu_out[i] is not positive (torch.relu's gradient;
// a NaN gradient there is 0 too). float and double are masked as bits, which GCC vectorizes (a select it does not).
template <bool Relu, typename scalar_t>
inline __attribute__((always_inline)) double passed_gradient(const scalar_t* g, const scalar_t* relu_out, int64_t i) {
  scalar_t gradient = g[i];
  if constexpr (Relu && (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>)) {
    using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
    bits_t bits;
    std::memcpy(&bits, &gradient, sizeof(bits));
    bits &= relu_out[i] > scalar_t(0) ? ~bits_t(0) : bits_t(0);
    std::memcpy(&gradient, &bits, sizeof(bits));
  } else if constexpr (Relu) {
    gradient = relu_out[i] > scalar_t(0) ? gradient : scalar_t(0);
  }
  return static_cast<double>(gradient);
}

// sum_g[c] = sum of g[n, c] and sum_gx[c] = sum of g[n, c] * (x[n, c] - mean[c]) over rows [first, last), with g
// masked by a fused ReLU's output when Relu.
template <bool Relu, typename scalar_t>
SV_VECTOR_CLONES void chunk_gradient_sums(const scalar_t* g, const scalar_t* relu_out, const scalar_t* x,
                                          const double* mean, int64_t first, int64_t last, int64_t columns,
                                          double* sum_g, double* sum_gx) {
  for (int64_t n = first; n < last; ++n) {
    for (int64_t c = 0; c < columns; ++c) {
      const double gradient = passed_gradient<Relu>(g, relu_out, n * columns + c);
      sum_g[c] += gradient;
      sum_gx[c] += gradient * (static_cast<double>(x[n * columns + c]) - mean[c]);
    }
  }
}

// out[n, c] = (x[n, c] - mean[c]) * scale[c] + shift[c] over rows [first, last), rounded to scalar_t, plus
// residual[n, c] when Residual (added in scalar_t, as a separate torch add would), then max(out, 0) when Relu (NaN
// stays NaN, as with torch.relu).
template <bool Relu, bool Residual, typename scalar_t>
SV_VECTOR_CLONES void normalise_rows(const scalar_t* x, const scalar_t* residual, const double* mean,
                                     const double* scale, const double* shift, int64_t first, int64_t last,
                                     int64_t columns, scalar_t* out) {
  for (int64_t n = first; n < last; ++n) {
    for (int64_t c = 0; c < columns; ++c) {
      scalar_t value =
          static_cast<scalar_t>((static_cast<double>(x[n * columns + c]) - mean[c]) * scale[c] + shift[c]);
      if constexpr (Residual) value = static_cast<scalar_t>(value + residual[n * columns + c]);
      out[n * columns + c] = Relu && value < scalar_t(0) ? scalar_t(0) : value;   // rounding keeps the sign
    }
  }
}

// grad[n, c] = scale[c] * (g[n, c] - mean_g[c] - (x[n, c] - mean[c]) * slope[c]) over rows [first, last), g masked
// as in chunk_gradient_sums.
template <bool Relu, typename scalar_t>
SV_VECTOR_CLONES void rows_gradient(const scalar_t* g, const scalar_t* relu_out, const scalar_t* x, const double* mean,
                                    const double* scale, const double* mean_g, const double* slope, int64_t first,
                                    int64_t last, int64_t columns, scalar_t* grad) {
  for (int64_t n = first; n < last; ++n) {
    for (int64_t c = 0; c < columns; ++c) {
      const double centred = static_cast<double>(x[n * columns + c]) - mean[c];
      const double gradient = passed_gradient<Relu>(g, relu_out, n * columns + c);
      grad[n * columns + c] = static_cast<scalar_t>(scale[c] * (gradient - mean_g[c] - centred * slope[c]));
    }
  }
}

// Per-chunk partials, 2 * columns doubles each (chunk_pass(first, last, first half, second half)), in chunk order.
template <typename ChunkPass>
std::vector<double> chunk_partials(int64_t count, int64_t columns, const ChunkPass& chunk_pass) {
  const int64_t chunks = at::divup(count, kChunkRows);
  std::vector<double> partial(chunks * 2 * columns, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      double* sums = partial.data() + chunk * 2 * columns;
      chunk_pass(chunk * kChunkRows, std::min(count, (chunk + 1) * kChunkRows), sums, sums + columns);
    }
  });
  return partial;
}

void check_arguments(const at::Tensor& rows, const std::optional<at::Tensor>& weight, const char* op) {
  TORCH_CHECK_VALUE(rows.dim() == 2, op, ": rows must be [N, C], got ", rows.sizes());
  TORCH_CHECK_VALUE(!weight.has_value() || (weight->dim() == 1 && weight->size(0) == rows.size(1)), op,
                    ": weight must be [", rows.size(1), "]");
}

std::vector<double> as_doubles(const std::optional<at::Tensor>& tensor, int64_t size, double fill) {
  if (!tensor.has_value()) return std::vector<double>(size, fill);
  const at::Tensor values = tensor->to(at::kDouble).contiguous();
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + size);
}

// 1 / sqrt(var + eps) and that times the weight, per column.
std::pair<std::vector<double>, std::vector<double>> inverse_deviations(const std::vector<double>& var,
                                                                       const std::optional<at::Tensor>& weight,
                                                                       double eps) {
  const std::vector<double> gamma = as_doubles(weight, var.size(), 1.0);
  std::vector<double> invstd(var.size()), scale(var.size());
  for (size_t c = 0; c < var.size(); ++c) {
    invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    scale[c] = invstd[c] * gamma[c];
  }
  return {invstd, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_batch_norm_cpu(const at::Tensor& rows_in,
                                                                  const std::optional<at::Tensor>& weight,
                                                                  const std::optional<at::Tensor>& bias, double eps,
                                                                  bool relu,
                                                                  const std::optional<at::Tensor>& residual_in) {
  check_arguments(rows_in, weight, "row_batch_norm");
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == rows_in.size(1)),
                    "row_batch_norm: bias must be [", rows_in.size(1), "]");
  TORCH_CHECK_VALUE(!residual_in.has_value() || (residual_in->sizes() == rows_in.sizes() &&
                                                 residual_in->scalar_type() == rows_in.scalar_type()),
                    "row_batch_norm: residual must be ", rows_in.sizes(), " of ", rows_in.scalar_type(), " like rows");
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t count = rows.size(0), columns = rows.size(1);
  at::Tensor out = empty_recycled(rows.sizes(), rows.options());
  at::Tensor mean = at::empty({columns}, rows.options()), var = at::empty({columns}, rows.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "row_batch_norm_cpu", [&] {
    const scalar_t* x = rows.data_ptr<scalar_t>();
    const std::vector<double> partial = chunk_partials(count, columns, [&](int64_t first, int64_t last, double* sums,
                                                                           double* squares) {
      chunk_moments(x, first, last, columns, sums, squares);
    });
    std::vector<double> mean_d(columns, 0.0), var_d(columns, 0.0);
    for (size_t p = 0; p < partial.size(); p += 2 * columns) {
      for (int64_t c = 0; c < columns; ++c) mean_d[c] += partial[p + c];
    }
    for (int64_t c = 0; c < columns; ++c) mean_d[c] /= double(count);
    for (int64_t chunk = 0; chunk * kChunkRows < count; ++chunk) {   // each chunk's squares about the overall mean
      const double rows_in_chunk = double(std::min(count, (chunk + 1) * kChunkRows) - chunk * kChunkRows);
      const double* sums = partial.data() + chunk * 2 * columns;
      for (int64_t c = 0; c < columns; ++c) {
        const double offset = sums[c] / rows_in_chunk - mean_d[c];
        var_d[c] += sums[columns + c] + rows_in_chunk * offset * offset;
      }
    }
    for (int64_t c = 0; c < columns; ++c) {
      var_d[c] /= double(count);
      mean.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(mean_d[c]);
      var.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(var_d[c]);
    }
    const std::vector<double> scale = inverse_deviations(var_d, weight, eps).second;
    const std::vector<double> shift = as_doubles(bias, columns, 0.0);
    scalar_t* y = out.data_ptr<scalar_t>();
    const scalar_t* r = residual.defined() ? residual.data_ptr<scalar_t>() : nullptr;
    auto normalise = [&](auto kernel) {
      at::parallel_for(0, count, kChunkRows, [&](int64_t begin, int64_t end) {
        kernel(x, r, mean_d.data(), scale.data(), shift.data(), begin, end, columns, y);
      });
    };
    if (relu && r) {
      normalise(normalise_rows<true, true, scalar_t>);
    } else if (relu) {
      normalise(normalise_rows<true, false, scalar_t>);
    } else if (r) {
      normalise(normalise_rows<false, true, scalar_t>);
    } else {
      normalise(normalise_rows<false, false, scalar_t>);
    }
  });
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_batch_norm_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& rows_in, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, double eps, const std::optional<at::Tensor>& relu_out_in) {
  check_arguments(rows_in, weight, "row_batch_norm_backward");
  TORCH_CHECK_VALUE(!relu_out_in.has_value() || relu_out_in->sizes() == rows_in.sizes(),
                    "row_batch_norm_backward: relu_out must be ", rows_in.sizes(), ", got ", relu_out_in->sizes());
  TORCH_CHECK_VALUE(grad_out_in.sizes() == rows_in.sizes(), "row_batch_norm_backward: grad_out must be ",
                    rows_in.sizes(), ", got ", grad_out_in.sizes());
  TORCH_CHECK_VALUE(mean.dim() == 1 && var.dim() == 1 && mean.size(0) == rows_in.size(1) &&
                        var.size(0) == rows_in.size(1),
                    "row_batch_norm_backward: mean and var must be [", rows_in.size(1), "]");
  const at::Tensor rows = rows_in.contiguous(), grad_out = grad_out_in.to(rows.scalar_type()).contiguous();
  const at::Tensor relu_out = relu_out_in.has_value() ? relu_out_in->to(rows.scalar_type()).contiguous() : at::Tensor();
  const int64_t count = rows.size(0), columns = rows.size(1);
  at::Tensor grad_rows = empty_recycled(rows.sizes(), rows.options());
  at::Tensor grad_weight = at::empty({columns}, rows.options()), grad_bias = at::empty({columns}, rows.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "row_batch_norm_backward_cpu", [&] {
    const scalar_t* x = rows.data_ptr<scalar_t>();
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const scalar_t* mask = relu_out.defined() ? relu_out.data_ptr<scalar_t>() : nullptr;
    const std::vector<double> centre = as_doubles(mean, columns, 0.0);
    const std::vector<double> partial = chunk_partials(count, columns, [&](int64_t first, int64_t last,
                                                                           double* sum_g, double* sum_gx) {
      if (mask) {
        chunk_gradient_sums<true>(g, mask, x, centre.data(), first, last, columns, sum_g, sum_gx);
      } else {
        chunk_gradient_sums<false>(g, mask, x, centre.data(), first, last, columns, sum_g, sum_gx);
      }
    });
    std::vector<double> sum_g(columns, 0.0), sum_gx(columns, 0.0);
    for (size_t p = 0; p < partial.size(); p += 2 * columns) {
      for (int64_t c = 0; c < columns; ++c) {
        sum_g[c] += partial[p + c];
        sum_gx[c] += partial[p + columns + c];
      }
    }
    const auto [invstd, scale] = inverse_deviations(as_doubles(var, columns, 0.0), weight, eps);
    std::vector<double> mean_g(columns), slope(columns);
    for (int64_t c = 0; c < columns; ++c) {
      grad_bias.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(sum_g[c]);
      grad_weight.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(sum_gx[c] * invstd[c]);
      mean_g[c] = sum_g[c] / double(count);
      slope[c] = sum_gx[c] * invstd[c] * invstd[c] / double(count);
    }
    scalar_t* dx = grad_rows.data_ptr<scalar_t>();
    at::parallel_for(0, count, kChunkRows, [&](int64_t begin, int64_t end) {
      if (mask) {
        rows_gradient<true>(g, mask, x, centre.data(), scale.data(), mean_g.data(), slope.data(), begin, end, columns,
                            dx);
      } else {
        rows_gradient<false>(g, mask, x, centre.data(), scale.data(), mean_g.data(), slope.data(), begin, end, columns,
                             dx);
      }
    });
  });
  return {grad_rows, grad_weight, grad_bias};
}

}  // namespace

void register_batch_norm_cpu(torch::Library& m) {
  m.impl("row_batch_norm", &row_batch_norm_cpu);
  m.impl("row_batch_norm_backward", &row_batch_norm_backward_cpu);
}

}  // namespace sparsevision
