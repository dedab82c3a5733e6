"""CUDA kernels written in Python (Triton), registered for the ``sparsevision`` ops' CUDA dispatch key.

``PYTHON_CUDA_KERNELS`` maps an op to the ``module:function`` that implements it on CUDA. The module is imported on
the op's first CUDA call, so importing sparsevision never imports Triton. These ops get no C++ CUDA kernel: the
extension registers its CUDA C++ paths under their own op names (``gather_gemm_conv``), which these functions may
call.
"""
import importlib
import importlib.util

import torch

PYTHON_CUDA_KERNELS = {
    'sparse_conv': '.conv:sparse_conv_cuda',   # Triton implicit GEMM, or the CUDA C++ gather-GEMM without Triton
    'sparse_conv_weight_grad': '.conv:sparse_conv_weight_grad_cuda',
    'spike_sparse_conv': '.spike_conv:spike_sparse_conv_cuda',
    'row_batch_norm': '.batch_norm:row_batch_norm_cuda',
    'row_batch_norm_backward': '.batch_norm:row_batch_norm_backward_cuda',
}


def _lazy(target: str):
    module_name, function_name = target.split(':')
    resolved = []

    def kernel(*args):
        if not resolved:
            resolved.append(getattr(importlib.import_module(module_name, __name__), function_name))
        return resolved[0](*args)

    kernel.__name__ = function_name
    return kernel


# Kernels that exist only in Triton: without Triton these ops run their pure-PyTorch references on CUDA.
TRITON_ONLY = frozenset({'spike_sparse_conv', 'row_batch_norm', 'row_batch_norm_backward'})


def register(library: torch.library.Library) -> None:
    """Registers the Python CUDA kernels with ``library`` (the ``sparsevision`` op library), the Triton-only ones
    only when Triton is installed."""
    with_triton = importlib.util.find_spec('triton') is not None
    for name, target in PYTHON_CUDA_KERNELS.items():
        if with_triton or name not in TRITON_ONLY:
            library.impl(name, _lazy(target), 'CUDA')
