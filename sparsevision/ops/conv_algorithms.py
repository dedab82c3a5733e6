"""The named paths (algorithms) of sparse convolution, the choice between them, and an override.

One enum names every path of the ``sparse_conv`` family on every device, as spconv's ``ConvAlgo`` and
torchsparse's dataflows do. The path is chosen from the shapes alone (:func:`conv_algorithm` says which one a call
takes); :func:`use_conv_algorithm` forces one in this thread, for tests and benchmarks.
"""
import contextlib
import enum
import threading
from typing import Iterator, Optional


class ConvAlgorithm(str, enum.Enum):
    """A sparse-convolution path. CPU paths live in ``csrc/cpu/``, GPU paths in ``csrc/cuda/`` and ``ops/gpu/``."""

    # CPU
    ROW_PAIRS = 'row_pairs'            # groups == 1: row pairs' accumulators in vector registers
    ROW_BLOCKS = 'row_blocks'          # groups == 1, wide weights: blocks of rows walked tap by tap
    NARROW_OUTPUTS = 'narrow_outputs'  # groups == 1, at most 8 outputs: dot products along input channels
    GROUPED = 'grouped'                # grouped and depthwise layers
    # GPU
    IMPLICIT_GEMM = 'implicit_gemm'    # one output-stationary Triton kernel over the [M, K] map
    GATHER_GEMM = 'gather_gemm'        # per tap: gather, GEMM, add (CUDA C++)

    @property
    def device_type(self) -> str:
        return 'cuda' if self in (ConvAlgorithm.IMPLICIT_GEMM, ConvAlgorithm.GATHER_GEMM) else 'cpu'


_forced = threading.local()


def forced_conv_algorithm() -> Optional[ConvAlgorithm]:
    """The path :func:`use_conv_algorithm` forces in this thread, or None."""
    return getattr(_forced, 'algorithm', None)


@contextlib.contextmanager
def use_conv_algorithm(algorithm) -> Iterator[ConvAlgorithm]:
    """Runs sparse convolutions in this thread on ``algorithm`` (a :class:`ConvAlgorithm` or its name).

    A call on another device, or whose shapes the path cannot take, raises ``ValueError`` instead of quietly taking
    another path.
    """
    algorithm = ConvAlgorithm(algorithm)
    previous = forced_conv_algorithm()
    _forced.algorithm = algorithm
    try:
        yield algorithm
    finally:
        _forced.algorithm = previous
