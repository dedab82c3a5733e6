"""The named paths (algorithms) of sparse convolution, the choice between them, and an override.

One enum names every path of the ``sparse_conv`` family on every device, as spconv's ``ConvAlgo`` and
torchsparse's dataflows do. The path is chosen from the shapes alone (:func:`conv_algorithm` says which one a call
takes); :func:`use_conv_algorithm` forces one in this thread, for tests and benchmarks. The weight gradient's CPU
paths are named by :class:`WeightGradAlgorithm` (:func:`weight_grad_algorithm`); they are not forced.

On CPU the choice is made by the native extension (``choose_conv_algorithm`` in ``csrc/cpu/conv_algorithm.cpp``,
which holds every threshold). Without the extension, CPU calls run the pure-PyTorch reference, which has no paths:
:func:`conv_algorithm` and :func:`weight_grad_algorithm` then return None and forcing a CPU path changes nothing.
"""
import contextlib
import enum
import importlib
import threading
from typing import Iterator, Optional

import torch


class ConvAlgorithm(str, enum.Enum):
    """A sparse-convolution path. CPU paths live in ``csrc/cpu/``, GPU paths in ``csrc/cuda/`` and ``ops/gpu/``."""

    # CPU
    ROW_PAIRS = 'row_pairs'            # groups == 1: row pairs' accumulators in vector registers
    ROW_BLOCKS = 'row_blocks'          # groups == 1, wide weights: blocks of rows walked tap by tap
    NARROW_OUTPUTS = 'narrow_outputs'  # groups == 1, at most 8 outputs: dot products along input channels
    GROUPED = 'grouped'                # any layer; chosen for grouped and depthwise ones
    # GPU
    IMPLICIT_GEMM = 'implicit_gemm'    # one output-stationary Triton kernel over the [M, K] map
    GATHER_GEMM = 'gather_gemm'        # per tap: gather, GEMM, add (CUDA C++)

    @property
    def device_type(self) -> str:
        return 'cuda' if self in (ConvAlgorithm.IMPLICIT_GEMM, ConvAlgorithm.GATHER_GEMM) else 'cpu'


class WeightGradAlgorithm(str, enum.Enum):
    """A CPU path of the sparse-convolution weight gradient (``csrc/cpu/weight_grad.cpp``)."""

    REGISTER_TILES = 'register_tiles'  # groups == 1: register-blocked tiles in blocks of output rows
    GROUPED = 'grouped'                # grouped and depthwise layers: one task per (tap, input-channel block)


_forced = threading.local()


def _native():
    """``sparsevision._C`` when its CPU kernels are in use, else None."""
    from .library import EXTENSION
    return importlib.import_module('sparsevision._C') if EXTENSION.cpu_kernels else None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix('torch.')


def conv_algorithm(features: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> Optional[ConvAlgorithm]:
    """The path ``sparse_conv(features, weight, ..., groups)`` takes in this thread (the forced one, if any).

    Args:
        features: ``[N, C_in]``.
        weight: ``[K, C_in / groups, C_out]``.
        groups: channel groups.

    Returns:
        The path, or None for CPU tensors when the native extension is absent (the reference runs instead).

    Raises:
        ValueError: if the forced path cannot take these shapes.
    """
    if features.device.type == 'cuda':
        from .gpu.conv import gpu_conv_algorithm
        return gpu_conv_algorithm(features, weight, groups)
    native = _native()
    if native is None:
        return None
    taps, _, out_channels = weight.shape
    return ConvAlgorithm(native.conv_algorithm(features.shape[1], out_channels, taps, groups,
                                               _dtype_name(features.dtype)))


def weight_grad_algorithm(groups: int = 1) -> Optional[WeightGradAlgorithm]:
    """The CPU path of ``sparse_conv_weight_grad`` with ``groups`` groups, or None without the native extension."""
    native = _native()
    return None if native is None else WeightGradAlgorithm(native.weight_grad_algorithm(groups))


def forced_conv_algorithm() -> Optional[ConvAlgorithm]:
    """The path :func:`use_conv_algorithm` forces in this thread, or None."""
    return getattr(_forced, 'algorithm', None)


@contextlib.contextmanager
def use_conv_algorithm(algorithm) -> Iterator[ConvAlgorithm]:
    """Runs sparse convolutions in this thread on ``algorithm`` (a :class:`ConvAlgorithm` or its name).

    A call on another device, or whose shapes the path cannot take, raises ``ValueError`` instead of quietly taking
    another path. The path holds for every sparse convolution of the thread, the backward's included (the input
    gradient is a sparse convolution with the weight transposed, so its shapes differ).
    """
    algorithm = ConvAlgorithm(algorithm)
    previous = forced_conv_algorithm()
    native = _native()
    _forced.algorithm = algorithm
    if native is not None:
        native.force_conv_algorithm(algorithm.value)
    try:
        yield algorithm
    finally:
        _forced.algorithm = previous
        if native is not None:
            native.force_conv_algorithm(None if previous is None else previous.value)
