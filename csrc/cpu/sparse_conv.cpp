// CPU kernels of sparsevision::sparse_conv and sparsevision::sparse_conv_weight_grad: argument checks, the choice of
// a named path (conv_algorithm.h) and the dispatch to it. The paths live one per file (conv_row_pairs.cpp,
// conv_row_blocks.cpp, conv_narrow_outputs.cpp, conv_grouped.cpp, weight_grad.cpp).
//
// The input gradient is sparse_conv itself, on the inverse map with the transposed weight (see
// sparsevision/ops/sparse_conv.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../registration.h"
#include "../sparse_conv.h"
#include "conv_algorithm.h"
#include "conv_paths.h"
#include "recycled_buffers.h"

namespace sparsevision {
namespace {

// `tensor` with its output-channel dimension `dim` zero-padded to a multiple of kOutputChannelMultiple. Layers with
// such outputs run on a register-blocked path (many times faster than the generic one, e.g. for a 24-channel layer,
// or the weight gradient of a stem's input gradient); the real outputs' sums, and their order, are unchanged, and the
// caller keeps only those.
at::Tensor padded_outputs(const at::Tensor& tensor, int64_t dim) {
  std::vector<int64_t> sizes = tensor.sizes().vec();
  sizes[dim] = padded_output_channels(sizes[dim]);
  at::Tensor padded = at::zeros(sizes, tensor.options());
  padded.narrow(dim, 0, tensor.size(dim)).copy_(tensor);
  return padded;
}

ConvShape with_padded_outputs(ConvShape shape) {
  shape.out_channels = shape.out_per_group = padded_output_channels(shape.out_channels);
  return shape;
}

at::Tensor convolve_on(ConvAlgorithm algorithm, const at::Tensor& features, const at::Tensor& weight,
                       const at::Tensor& neighbors, const ConvShape& shape) {
  at::Tensor out = empty_recycled({shape.outputs, shape.out_channels}, features.options());
  switch (algorithm) {
    case ConvAlgorithm::kRowPairs:
      row_pairs_conv(features, weight, neighbors, shape, out);
      break;
    case ConvAlgorithm::kRowBlocks:
      row_blocks_conv(features, weight, neighbors, shape, out);
      break;
    case ConvAlgorithm::kNarrowOutputs:
      narrow_outputs_conv(features, weight, neighbors, shape, out);
      break;
    case ConvAlgorithm::kGrouped:
      grouped_conv(features, weight, neighbors, shape, out);
      break;
  }
  return out;
}

at::Tensor sparse_conv_cpu(const at::Tensor& features_in, const at::Tensor& weight,
                           const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors, int64_t groups) {
  check_conv_arguments(features_in, weight, neighbors_in, groups);
  const at::Tensor features = features_in.contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  check_neighbor_range(neighbors, features.size(0), "sparse_conv");
  const ConvShape shape{neighbors.size(0), neighbors.size(1), features.size(1), weight.size(2), groups,
                        weight.size(1), weight.size(2) / groups};
  const ConvAlgorithm algorithm =
      conv_algorithm_for({shape.in_channels, shape.out_channels, shape.taps, groups, features.scalar_type()});
  if (shape.outputs * shape.out_channels == 0) {
    return at::empty({shape.outputs, shape.out_channels}, features.options());
  }
  const bool in_output_chunks = algorithm == ConvAlgorithm::kRowPairs || algorithm == ConvAlgorithm::kRowBlocks;
  if (in_output_chunks && shape.out_channels % kOutputChannelMultiple != 0) {   // see padded_outputs
    return convolve_on(algorithm, features, padded_outputs(weight, 2), neighbors, with_padded_outputs(shape))
        .narrow(1, 0, shape.out_channels)
        .contiguous();
  }
  return convolve_on(algorithm, features, weight, neighbors, shape);
}

at::Tensor sparse_conv_weight_grad_cpu(const at::Tensor& features_in, const at::Tensor& grad_output_in,
                                       const at::Tensor& neighbors_in, const at::Tensor& inverse_neighbors,
                                       int64_t groups) {
  check_weight_grad_arguments(features_in, grad_output_in, neighbors_in, groups);
  const at::Tensor features = features_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(features.scalar_type()).contiguous();
  const at::Tensor neighbors = neighbors_in.contiguous();
  check_neighbor_range(neighbors, features.size(0), "sparse_conv_weight_grad");
  const ConvShape shape{neighbors.size(0), neighbors.size(1), features.size(1), grad_output.size(1), groups,
                        features.size(1) / groups, grad_output.size(1) / groups};
  if (shape.outputs == 0 || shape.in_per_group == 0) {
    return at::zeros({shape.taps, shape.in_per_group, shape.out_channels}, features.options());
  }
  const WeightGradAlgorithm algorithm = choose_weight_grad_algorithm(groups);
  if (algorithm == WeightGradAlgorithm::kRegisterTiles && shape.out_channels % kOutputChannelMultiple != 0) {
    return weight_grad_on(algorithm, features, padded_outputs(grad_output, 1), neighbors, with_padded_outputs(shape))
        .narrow(2, 0, shape.out_channels)
        .contiguous();
  }
  return weight_grad_on(algorithm, features, grad_output, neighbors, shape);
}

}  // namespace

at::Tensor sparse_conv_on_cpu(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& neighbors,
                              const at::Tensor& inverse_neighbors, int64_t groups) {
  return sparse_conv_cpu(features, weight, neighbors, inverse_neighbors, groups);
}

void register_sparse_conv_cpu(torch::Library& m) {
  m.impl("sparse_conv", &sparse_conv_cpu);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cpu);
}

}  // namespace sparsevision
