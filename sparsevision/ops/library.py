"""The ``sparsevision`` operator library: schemas, native kernels, reference fallback.

Schemas are defined here, once (from :mod:`sparsevision.ops.schemas`). The native CPU (and, when compiled in,
CUDA) kernels of :mod:`sparsevision._C` are then registered for them, if the extension was built for the same
schemas; a stale build is reported and left unused. For CPU or CUDA, wherever the extension has no kernel for an
op, the pure-PyTorch reference from :mod:`sparsevision.ops.reference` is registered instead and one warning says so.
``SPARSEVISION_DISABLE_EXTENSION=1`` forces the reference path everywhere.
"""
import importlib
import os
import warnings
from dataclasses import dataclass

import torch

from . import gpu, reference, schemas
from .schemas import SCHEMAS

LIBRARY_NAME = 'sparsevision'
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
    return register_kernels(module)


def register_kernels(module) -> ExtensionInfo:
    """Registers the extension module's kernels if it was built for these schemas (else reports a stale build)."""
    built_for, expected = getattr(module, 'SCHEMA_FINGERPRINT', 'none'), schemas.fingerprint()
    if built_for != expected:
        return ExtensionInfo(False, False, False, f'sparsevision._C was built for other op schemas (fingerprint '
                                                  f'{built_for}, these are {expected}): a stale build')
    try:
        module.register_kernels()
    except RuntimeError as error:
        return ExtensionInfo(False, False, False, f'sparsevision._C could not register its kernels: {error}')
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
gpu.register(_library)
_register_fallbacks(_library, EXTENSION)
