"""The CUDA kernels of ``sparsevision::sparse_conv`` and ``sparse_conv_weight_grad``: the path the shapes call for."""
import torch

_gather_gemm_conv = torch.ops.sparsevision.gather_gemm_conv.default
_gather_gemm_weight_grad = torch.ops.sparsevision.gather_gemm_conv_weight_grad.default


def sparse_conv_cuda(features, weight, neighbors, inverse_neighbors, groups):
    return _gather_gemm_conv(features, weight, neighbors, inverse_neighbors, groups)


def sparse_conv_weight_grad_cuda(features, grad_output, neighbors, inverse_neighbors, groups):
    return _gather_gemm_weight_grad(features, grad_output, neighbors, inverse_neighbors, groups)
