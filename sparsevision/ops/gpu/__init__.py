"""CUDA kernels written in Python (Triton), registered for the ``sparsevision`` ops' CUDA dispatch key.

``PYTHON_CUDA_KERNELS`` maps an op to the ``module:function`` that implements it on CUDA. The module is imported on
the op's first CUDA call, so importing sparsevision never imports Triton. These ops get no C++ CUDA kernel: the
extension registers its CUDA C++ paths under their own op names (``gather_gemm_conv``), which these functions may
call.
"""
import importlib

import torch

PYTHON_CUDA_KERNELS = {
    'sparse_conv': '.conv:sparse_conv_cuda',
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


def register(library: torch.library.Library) -> None:
    """Registers every Python CUDA kernel with ``library`` (the ``sparsevision`` op library)."""
    for name, target in PYTHON_CUDA_KERNELS.items():
        library.impl(name, _lazy(target), 'CUDA')
