"""Run a module's Triton kernels in Triton's interpreter, on CPU tensors, without changing them for anyone else.

Triton decides on the interpreter when ``@triton.jit`` decorates a function, its own ``triton.language`` helpers
included, so the kernels' module is executed afresh, with a private copy of the ``triton`` package, while
``TRITON_INTERPRET=1``. ``sys.modules`` and the environment are restored afterwards: everything else in the process
(the registered CUDA kernels, AOT compiles) keeps the ordinary Triton.
"""
import importlib
import importlib.util
import os
import sys
from unittest import mock

import pytest
import torch

BACKENDS = [pytest.param('interpreter'),
            pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU'))]


def _is_triton_python(name: str) -> bool:
    """Triton's Python modules (its compiled ``triton._C`` extension is shared by both copies)."""
    return (name == 'triton' or name.startswith('triton.')) and not name.startswith('triton._C')


def interpreted_copy(module_name: str):
    """A private copy of ``module_name`` whose ``@triton.jit`` kernels run in Triton's interpreter."""
    saved = {name: module for name, module in sys.modules.items() if _is_triton_python(name)}
    for name in saved:
        del sys.modules[name]
    try:
        with mock.patch.dict(os.environ, TRITON_INTERPRET='1'):
            spec = importlib.util.find_spec(module_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    finally:
        for name in [name for name in sys.modules if _is_triton_python(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    return module


def registered_cuda_kernel(op: str):
    """The function ``ops/gpu``'s registry names as ``op``'s CUDA kernel (the op has one in the dispatcher)."""
    from sparsevision.ops import gpu
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f'sparsevision::{op}', 'CUDA')
    module_name, function_name = gpu.PYTHON_CUDA_KERNELS[op].split(':')
    return getattr(importlib.import_module(module_name, gpu.__name__), function_name)


def kernels_on(backend: str, module_name: str):
    """``(module, device)``: the interpreted copy and CPU, or the module itself and CUDA."""
    if backend == 'interpreter':
        return interpreted_copy(module_name), torch.device('cpu')
    return importlib.import_module(module_name), torch.device('cuda')
