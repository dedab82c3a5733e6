"""Kernel maps whose entries are known to be ``-1`` or rows of the input, so a GPU op need not re-check them.

Checking a map's range on the GPU costs a device-to-host sync. A map is checked once instead and the result kept in
a :class:`~sparsevision.ops.tensor_facts.TensorFacts` (see there for which edits go unnoticed). Maps built by
:mod:`sparsevision.ops.kernel_map` are recorded as valid when they are built, with no check at all, and as
invertible when their output sites are known to be distinct (an input then feeds at most one output per tap).
"""
from typing import NamedTuple

import torch

from .tensor_facts import TensorFacts

_INVALID_BOUND = 2**62   # the bound recorded for a map with an entry below -1: no input is large enough


class MapFacts(NamedTuple):
    bound: int          # one more than the largest entry
    invertible: bool    # no input is read by two outputs through one tap


checked_maps = TensorFacts()


def mark_valid(neighbors: torch.Tensor, num_inputs: int, invertible: bool = False) -> None:
    """Records that every entry of ``neighbors`` is ``-1`` or below ``num_inputs`` (the builders call this)."""
    checked_maps.record(neighbors, MapFacts(num_inputs, invertible))


def known_invertible(neighbors: torch.Tensor, num_inputs: int) -> bool:
    """Whether ``neighbors`` is known to be a map into ``num_inputs`` rows that :func:`invert_kernel_map` accepts."""
    facts = checked_maps.get(neighbors)
    return facts is not None and facts.invertible and facts.bound <= num_inputs


def require_valid(neighbors: torch.Tensor, num_inputs: int, op: str) -> None:
    """Raises unless every entry of ``neighbors`` is ``-1`` or a row below ``num_inputs``.

    Syncs once per map (not per call): a map seen before, and unchanged since, is not read again.

    Raises:
        ValueError: an entry out of range, or an unchecked map during CUDA-graph capture (where a sync is illegal).
    """
    if neighbors.is_meta:   # no values to check (tracing, shape propagation)
        return
    facts = checked_maps.get(neighbors)
    if facts is None:
        facts = MapFacts(_measure(neighbors, op), False)
        checked_maps.record(neighbors, facts)
    if facts.bound > num_inputs:
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
