"""The CPU emulation of the CUDA kernels, and the backends the CUDA tests run on.

``csrc/cuda/*.cu`` are compiled by the host compiler against a small shim (``csrc/emulation/``): every block and
thread of a launch runs on the CPU, and the ops register as the CPU kernels of the ``sv_emu`` namespace. Within
:class:`EmulatedCuda`, the ``sparsevision`` ops that have CUDA C++ kernels run those kernels on CPU tensors, so one
test body checks the emulated kernels here and the real ones on a GPU (:data:`BACKENDS`).

``SV_EMULATION_SANITIZE=1`` builds with AddressSanitizer and UndefinedBehaviorSanitizer (``make emulation-sanitize``
runs the tests that way).
"""
import functools
import os
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparsevision.ops.gpu import PYTHON_CUDA_KERNELS
from sparsevision.ops.schemas import SCHEMAS

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCES = REPO_ROOT / 'csrc'
NAMESPACE = 'sv_emu'
SANITIZE = os.environ.get('SV_EMULATION_SANITIZE') == '1'
# The sparse_conv family runs its CUDA C++ path (the Triton path has its own interpreter tests).
CUDA_PATHS = {'sparse_conv': 'gather_gemm_conv', 'sparse_conv_weight_grad': 'gather_gemm_conv_weight_grad'}


def _wrappers(build_dir: Path):
    """One C++ file per .cu source that includes it (cpp_extension picks the compiler by file extension)."""
    wrappers = []
    for source in sorted((SOURCES / 'cuda').glob('*.cu')):
        wrapper = build_dir / f'{source.stem}_emulated.cpp'
        text = f'#include "{source}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        wrappers.append(str(wrapper))
    return wrappers


@functools.cache
def load() -> None:
    """Builds (ninja-cached under build/) and loads the emulation; defines the ``sv_emu`` schemas first."""
    from torch.utils import cpp_extension

    library = torch.library.Library(NAMESPACE, 'DEF')
    for schema in SCHEMAS.values():
        library.define(schema)
    load.library = library   # kept alive with the process
    name = 'sv_cuda_emulation_sanitized' if SANITIZE else 'sv_cuda_emulation'
    build_dir = REPO_ROOT / 'build' / name
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = ['-O1', '-g', '-std=c++20', '-ffp-contract=off', '-DWITH_CUDA', '-DSV_CUDA_EMULATION',
             '-include', str(SOURCES / 'emulation' / 'cuda_emulation.h')]
    link = []
    if SANITIZE:
        flags += ['-fsanitize=address,undefined', '-fno-omit-frame-pointer', '-fno-sanitize-recover=undefined']
        link += ['-fsanitize=address,undefined']
    cpp_extension.load(name, _wrappers(build_dir) + [str(SOURCES / 'emulation' / 'registration.cpp')],
                       extra_cflags=flags, extra_ldflags=link,
                       extra_include_paths=[str(SOURCES / 'emulation' / 'include')],
                       build_directory=str(build_dir), is_python_module=False, verbose=False)


def launch_count() -> int:
    """Emulated kernel launches so far in this process."""
    return torch.ops.sv_emu.launch_count()


class EmulatedCuda(TorchDispatchMode):
    """Runs the ``sparsevision`` ops that have CUDA C++ kernels on their emulated kernels (CPU tensors).

    Ops whose CUDA kernels are Triton (``ops/gpu``) keep their CPU kernels here (the interpreter tests run those);
    every other op must have an emulated kernel, or the call fails, so a test cannot pass on the CPU kernels alone.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == 'sparsevision':
            name = func.__name__.split('.')[0]
            if name in CUDA_PATHS:
                name = CUDA_PATHS[name]
            elif name in PYTHON_CUDA_KERNELS:
                return func(*args, **(kwargs or {}))
            return getattr(torch.ops.sv_emu, name).default(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class Backend:
    """Where a CUDA test runs: ``cuda`` (a GPU) or ``emulated`` (the CPU emulation, in ``order``)."""

    def __init__(self, name: str, order: str = 'forward'):
        self.name, self.order = name, order
        self.device = torch.device('cuda' if name == 'cuda' else 'cpu')

    def __repr__(self):
        return self.name if self.name == 'cuda' else f'{self.name}-{self.order}'

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)

    def __enter__(self):
        if self.name == 'emulated':
            load()
            self._previous_order = os.environ.get('SV_EMULATION_ORDER')
            os.environ['SV_EMULATION_ORDER'] = self.order
            self._mode = EmulatedCuda()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.name == 'emulated':
            self._mode.__exit__(*exc)
            if self._previous_order is None:
                os.environ.pop('SV_EMULATION_ORDER')
            else:
                os.environ['SV_EMULATION_ORDER'] = self._previous_order
        return False


def backends():
    """The real GPU when there is one; the emulation (in forward and shuffled thread order) unless
    ``SV_SKIP_EMULATION=1``."""
    found = [Backend('cuda')] if torch.cuda.is_available() else []
    if os.environ.get('SV_SKIP_EMULATION') != '1':
        found += [Backend('emulated'), Backend('emulated', 'shuffle')]
    return found


if __name__ == '__main__':
    load()
    print(f'CUDA emulation built and loaded ({"sanitized" if SANITIZE else "plain"})')
