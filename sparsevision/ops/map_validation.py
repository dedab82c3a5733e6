"""Kernel maps whose entries are known to be ``-1`` or rows of the input, so a GPU convolution need not re-check them.

Checking a map's range on the GPU costs a device-to-host sync. A map is checked once instead, and remembered by its
identity and version (a weak reference, so a freed map is forgotten and an in-place edit is re-checked). Maps built
by :mod:`sparsevision.ops.kernel_map` are recorded as valid when they are built, with no check at all. Two edits go
unnoticed: one through ``.data``, which bypasses the version counter, and one to a map made under
``torch.inference_mode``, which keeps no counter. The kernels read an out-of-range entry as absent, so such an edit
gives wrong sums, never an out-of-bounds read.
"""
import weakref
from typing import Dict, Optional, Tuple

import torch

_INVALID_BOUND = 2**62   # the bound recorded for a map with an entry below -1: no input is large enough
_bounds: Dict[int, Tuple[weakref.ref, Optional[int], int]] = {}


def _version(neighbors: torch.Tensor) -> Optional[int]:
    return None if neighbors.is_inference() else neighbors._version   # inference tensors keep no version counter


def _remember(neighbors: torch.Tensor, bound: int) -> None:
    key = id(neighbors)

    def forget(reference, key=key):
        if key in _bounds and _bounds[key][0] is reference:
            del _bounds[key]

    _bounds[key] = (weakref.ref(neighbors, forget), _version(neighbors), bound)


def mark_valid(neighbors: torch.Tensor, num_inputs: int) -> None:
    """Records that every entry of ``neighbors`` is ``-1`` or below ``num_inputs`` (the builders call this)."""
    if not torch.compiler.is_compiling():
        _remember(neighbors, num_inputs)


def require_valid(neighbors: torch.Tensor, num_inputs: int, op: str) -> None:
    """Raises unless every entry of ``neighbors`` is ``-1`` or a row below ``num_inputs``.

    Syncs once per map (not per call): a map seen before, and unchanged since, is not read again.

    Raises:
        ValueError: an entry out of range, or an unchecked map during CUDA-graph capture (where a sync is illegal).
    """
    known = _bounds.get(id(neighbors))
    if known is not None and known[0]() is neighbors and known[1] == _version(neighbors):
        bound = known[2]
    else:
        bound = _measure(neighbors, op)
        _remember(neighbors, bound)
    if bound > num_inputs:
        raise ValueError(f'{op}: kernel map entries must be -1 or rows of features (< {num_inputs})')


def capturing(neighbors: torch.Tensor) -> bool:
    """Whether ``neighbors``' device is capturing a CUDA graph on the current stream."""
    return neighbors.is_cuda and torch.cuda.is_current_stream_capturing()


def _measure(neighbors: torch.Tensor, op: str) -> int:
    """One more than the largest entry (``_INVALID_BOUND`` if an entry is below -1), with one sync."""
    if neighbors.numel() == 0:
        return 0
    if capturing(neighbors):
        raise ValueError(f'{op}: this kernel map was never checked, and checking it needs a sync, which CUDA-graph '
                         'capture forbids; build it with sparsevision.ops.build_kernel_map, or run the layer once '
                         'before capturing')
    largest = neighbors.amax().to(torch.int64) + 1
    return int(torch.where(neighbors.amin() < -1, _INVALID_BOUND, largest))
