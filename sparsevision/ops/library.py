"""The ``sparsevision`` operator library: schemas, native kernels, reference fallback.

Schemas are defined here, once. Importing :mod:`sparsevision._C` then
registers the native CPU (and, when compiled in, CUDA) kernels for them. For
CPU or CUDA, wherever the extension has no kernel for an op, the pure-PyTorch reference from
:mod:`sparsevision.ops.reference` is registered instead and one warning says so.
``SPARSEVISION_DISABLE_EXTENSION=1`` forces the reference path everywhere.
"""
import importlib
import os
import warnings
from dataclasses import dataclass

import torch

from . import reference

LIBRARY_NAME = 'sparsevision'
SCHEMAS = {
    'gather_tokens': 'gather_tokens(Tensor tokens, Tensor index) -> Tensor',
    'scatter_tokens': 'scatter_tokens(Tensor tokens, Tensor index, SymInt num_tokens) -> Tensor',
    'merge_tokens': ('merge_tokens(Tensor tokens, Tensor sizes, Tensor index, SymInt num_out) '
                     '-> (Tensor merged, Tensor merged_sizes)'),
    'select_tokens': 'select_tokens(Tensor scores, int keep, int num_prefix) -> Tensor',
    'kernel_map': ('kernel_map(Tensor in_indices, Tensor out_indices, int[] spatial_shape, int[] kernel_size, '
                   'int[] stride, int[] padding, int[] dilation) -> Tensor'),
    'downsample_indices': ('downsample_indices(Tensor indices, int[] spatial_shape, int[] kernel_size, '
                           'int[] stride, int[] padding, int[] dilation) -> Tensor'),
    'invert_kernel_map': 'invert_kernel_map(Tensor neighbors, SymInt num_inputs) -> Tensor',
    'sparse_conv': ('sparse_conv(Tensor features, Tensor weight, Tensor neighbors, Tensor inverse_neighbors, '
                    'int groups) -> Tensor'),
    'sparse_conv_weight_grad': ('sparse_conv_weight_grad(Tensor features, Tensor grad_output, Tensor neighbors, '
                                'Tensor inverse_neighbors, int groups) -> Tensor'),
    'spike_sparse_conv': ('spike_sparse_conv(Tensor spikes, Tensor weight, Tensor neighbors, '
                          'Tensor inverse_neighbors) -> Tensor'),
    'row_batch_norm': ('row_batch_norm(Tensor rows, Tensor? weight, Tensor? bias, float eps, bool relu=False) '
                       '-> (Tensor out, Tensor mean, Tensor var)'),
    'row_batch_norm_backward': ('row_batch_norm_backward(Tensor grad_out, Tensor rows, Tensor mean, Tensor var, '
                                'Tensor? weight, float eps, Tensor? relu_out=None) -> (Tensor grad_rows, '
                                'Tensor grad_weight, Tensor grad_bias)'),
}
BUILD_HINT = ('build it with `make build` (or `pip install --no-build-isolation -e .` from the repository root; '
              'set CUDA_HOME for CUDA kernels)')


@dataclass(frozen=True)
class ExtensionInfo:
    """What the native extension provides in this process."""

    loaded: bool
    cpu_kernels: bool
    cuda_kernels: bool
    error: str = ''

    def __str__(self):
        if not self.loaded:
            return f'sparsevision._C not loaded ({self.error}); ops use their pure-PyTorch references'
        devices = 'CPU and CUDA' if self.cuda_kernels else 'CPU'
        return f'sparsevision._C loaded with {devices} kernels'


def _load_extension() -> ExtensionInfo:
    if os.environ.get('SPARSEVISION_DISABLE_EXTENSION') == '1':
        return ExtensionInfo(False, False, False, 'disabled by SPARSEVISION_DISABLE_EXTENSION=1')
    try:
        module = importlib.import_module('sparsevision._C')
    except ImportError as error:
        return ExtensionInfo(False, False, False, str(error))
    return ExtensionInfo(True, True, bool(module.WITH_CUDA))


def _register_fallbacks(library: torch.library.Library, info: ExtensionInfo) -> None:
    """Register the reference of every op that has no native kernel for CPU or CUDA."""
    missing_cuda = []
    for name in SCHEMAS:
        for key in ('CPU', 'CUDA'):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f'{LIBRARY_NAME}::{name}', key):
                library.impl(name, getattr(reference, name), key)
                if key == 'CUDA':
                    missing_cuda.append(name)
    if not info.loaded:
        warnings.warn(f'{info}; {BUILD_HINT}.', RuntimeWarning, stacklevel=2)
    elif missing_cuda and torch.cuda.is_available():
        warnings.warn(f'sparsevision._C has no CUDA kernel for {", ".join(missing_cuda)}, so on CUDA tensors '
                      f'these run their pure-PyTorch references; {BUILD_HINT}.', RuntimeWarning, stacklevel=2)


_library = torch.library.Library(LIBRARY_NAME, 'DEF')
for _schema in SCHEMAS.values():
    _library.define(_schema)
EXTENSION = _load_extension()
_register_fallbacks(_library, EXTENSION)
