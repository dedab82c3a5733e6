"""The CUDA kernels of ``sparsevision::sparse_conv`` and ``sparse_conv_weight_grad``: the path the shapes call for.

:data:`~sparsevision.ops.conv_algorithms.ConvAlgorithm.IMPLICIT_GEMM` (Triton, :mod:`.implicit_gemm`) takes fp32,
fp16 and bf16 when Triton is installed; everything else takes the C++ ``GATHER_GEMM`` op. Neither path syncs with
the host once its kernel map has been checked (see :mod:`sparsevision.ops.map_validation`).
"""
import functools
import importlib.util
from typing import Optional

import torch

from ..conv_algorithms import ConvAlgorithm, forced_conv_algorithm
from ..devices import check_same_device
from ..map_validation import require_valid
from .launch import on_device_of

IMPLICIT_GEMM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_gather_gemm_conv = torch.ops.sparsevision.gather_gemm_conv.default
_gather_gemm_weight_grad = torch.ops.sparsevision.gather_gemm_conv_weight_grad.default


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec('triton') is not None


def gpu_conv_algorithm(features: torch.Tensor, weight: torch.Tensor, groups: int) -> ConvAlgorithm:
    """The GPU path of a convolution of ``features`` with ``weight`` (for the weight gradient: the output gradient).

    Honours :func:`~sparsevision.ops.conv_algorithms.use_conv_algorithm`.

    Raises:
        ValueError: the forced path is a CPU path, or cannot take these tensors.
    """
    implicit_gemm_fits = (triton_available() and features.dtype in IMPLICIT_GEMM_DTYPES
                          and weight.dtype == features.dtype)
    forced = forced_conv_algorithm()
    if forced is None:
        return ConvAlgorithm.IMPLICIT_GEMM if implicit_gemm_fits else ConvAlgorithm.GATHER_GEMM
    if forced.device_type != 'cuda':
        raise ValueError(f'sparse_conv: the forced path {forced.value!r} runs on the CPU, not on {features.device}')
    if forced is ConvAlgorithm.IMPLICIT_GEMM and not implicit_gemm_fits:
        reason = 'Triton is not installed' if not triton_available() else 'it takes fp32, fp16 or bf16 only'
        raise ValueError(f'sparse_conv: the forced path implicit_gemm cannot take {features.dtype} features with '
                         f'{weight.dtype} weights with groups={groups}: {reason}')
    return forced


def _check_map(op: str, neighbors: torch.Tensor, taps: Optional[int] = None) -> None:
    if neighbors.dim() != 2 or neighbors.dtype != torch.int32 or neighbors.shape[1] != (taps or neighbors.shape[1]):
        raise ValueError(f'{op}: neighbors must be an int32 [M, {taps or "taps"}] kernel map, got {neighbors.dtype} '
                         f'{tuple(neighbors.shape)}')


def sparse_conv_cuda(features, weight, neighbors, inverse_neighbors, groups):
    check_same_device('sparse_conv', features=features, weight=weight, neighbors=neighbors,
                      inverse_neighbors=inverse_neighbors)
    if gpu_conv_algorithm(features, weight, groups) is ConvAlgorithm.GATHER_GEMM:
        return _gather_gemm_conv(features, weight, neighbors, inverse_neighbors, groups)
    if (features.dim() != 2 or weight.dim() != 3 or groups < 1 or features.shape[1] != weight.shape[1] * groups
            or weight.shape[2] % groups):
        raise ValueError(f'sparse_conv: features {tuple(features.shape)} do not fit weight {tuple(weight.shape)} '
                         f'with groups={groups}')
    _check_map('sparse_conv', neighbors, weight.shape[0])
    require_valid(neighbors, features.shape[0], 'sparse_conv')
    from .implicit_gemm import implicit_gemm_conv   # imports Triton
    with on_device_of(features):
        return implicit_gemm_conv(features, weight, neighbors, groups)


def sparse_conv_weight_grad_cuda(features, grad_output, neighbors, inverse_neighbors, groups):
    check_same_device('sparse_conv_weight_grad', features=features, grad_output=grad_output, neighbors=neighbors,
                      inverse_neighbors=inverse_neighbors)
    if gpu_conv_algorithm(features, grad_output, groups) is ConvAlgorithm.GATHER_GEMM:
        return _gather_gemm_weight_grad(features, grad_output, neighbors, inverse_neighbors, groups)
    _check_map('sparse_conv_weight_grad', neighbors)
    if (features.dim() != 2 or grad_output.dim() != 2 or grad_output.shape[0] != neighbors.shape[0] or groups < 1
            or features.shape[1] % groups or grad_output.shape[1] % groups):
        raise ValueError(f'sparse_conv_weight_grad: features {tuple(features.shape)} and grad_output '
                         f'{tuple(grad_output.shape)} do not fit a kernel map of {neighbors.shape[0]} rows with '
                         f'groups={groups}')
    require_valid(neighbors, features.shape[0], 'sparse_conv_weight_grad')
    from .implicit_gemm_weight_grad import implicit_gemm_weight_grad   # imports Triton
    with on_device_of(features):
        return implicit_gemm_weight_grad(features, grad_output, neighbors, groups)
