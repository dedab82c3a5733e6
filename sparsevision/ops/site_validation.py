"""Checking coordinates against their grid, once per coordinate set.

On a GPU, checking coordinates costs a device-to-host copy. What a check found is kept in a
:class:`~sparsevision.ops.tensor_facts.TensorFacts`: each column's upper bound, and whether the rows are known to
name distinct sites (the kernel-map builders establish that, and a strided convolution's output sites are distinct
by construction). Coordinates checked once are not read again for a grid at least as large, so building the kernel
maps of a network on a checked input waits for the device only where an output's size must be known.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from .coordinates import MAX_LINEAR_KEY
from .tensor_facts import TensorFacts

INDEX_DTYPES = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)


class SiteFacts(NamedTuple):
    bounds: Tuple[int, ...]   # per column (batch, then the axes), no value is larger
    distinct: bool            # no two rows name the same site


checked_sites = TensorFacts()


def check_indices(indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: Optional[int] = None,
                  name: str = 'indices') -> torch.Tensor:
    """Validate ``[N, 1 + D]`` coordinates against their grid; return them as contiguous int32.

    int32 is spconv's dtype; int64, int16, int8 and uint8 coordinates are converted (int64 only when every value
    fits). uint8 cannot hold a negative value, so a negative coordinate computed in uint8 has already wrapped
    around before it gets here: compute coordinates in a signed dtype. Coordinates returned by this function (or
    made by :func:`~sparsevision.ops.downsample_indices`) are not read again while unchanged.

    Raises:
        ValueError: float or other non-integer dtypes (naming the dtype), wrong-shaped coordinates, negative or
            out-of-grid values, a batch index ``>= batch_size``, or a grid too large for int64 keys.
    """
    dims = len(spatial_shape)
    if indices.dtype not in INDEX_DTYPES:
        advice = ('voxelize float points first' if indices.is_floating_point() else
                  'convert them with .to(torch.int32)')
        raise ValueError(f'{name} must be integers of dtype int32 (int64, int16, int8 and uint8 are converted), got '
                         f'{indices.dtype}; {advice}')
    if indices.dim() != 2 or indices.shape[1] != dims + 1:
        raise ValueError(f'{name} must be [N, {dims + 1}] (batch, then {dims} coordinates) for a {dims}-D '
                         f'spatial_shape, got shape {tuple(indices.shape)}')
    if any(size <= 0 for size in spatial_shape):
        raise ValueError(f'spatial_shape must be positive, got {list(spatial_shape)}')
    if not indices.numel() or torch.compiler.is_compiling():
        return indices.to(torch.int32).contiguous()
    known = checked_sites.get(indices)
    if known is not None and _grid_problem(known.bounds, spatial_shape, batch_size, name) is None:
        return indices
    low, high = torch.stack([indices.amin(dim=0), indices.amax(dim=0)]).tolist()   # one read from the device
    if min(low) < 0:
        raise ValueError(f'{name} has negative values (column minima {low})')
    problem = _grid_problem(high, spatial_shape, batch_size, name)
    if problem is not None:
        raise ValueError(problem)
    checked = indices.to(torch.int32).contiguous()
    checked_sites.record(checked, SiteFacts(tuple(high), known is not None and known.distinct))
    return checked


def mark_on_grid(indices: torch.Tensor, batch_bound: int, spatial_shape: Sequence[int]) -> None:
    """Records that ``indices`` are distinct sites of ``[batch_bound + 1, *spatial_shape]`` (for builders' output)."""
    checked_sites.record(indices, SiteFacts((batch_bound, *(size - 1 for size in spatial_shape)), True))


def mark_distinct(indices: torch.Tensor) -> None:
    """Records that the rows of checked ``indices`` name distinct sites (a kernel-map build found no duplicate)."""
    known = checked_sites.get(indices)
    if known is not None:
        checked_sites.record(indices, known._replace(distinct=True))


def known_distinct(indices: torch.Tensor) -> bool:
    """Whether ``indices``, unchanged since their check, are known to name distinct sites."""
    known = checked_sites.get(indices)
    return known is not None and known.distinct


def _grid_problem(high: Sequence[int], spatial_shape: Sequence[int], batch_size: Optional[int],
                  name: str) -> Optional[str]:
    """Why coordinates with column maxima ``high`` do not fit the grid, or None when they do."""
    if max(high) >= 2**31:
        return f'{name} values do not fit in int32 (largest magnitude {max(high)})'
    outside = [axis for axis in range(len(spatial_shape)) if high[axis + 1] >= spatial_shape[axis]]
    if outside:
        return (f'{name} column {outside[0] + 1} reaches {high[outside[0] + 1]} but spatial_shape is '
                f'{list(spatial_shape)} (coordinates must be < the shape)')
    if batch_size is not None and high[0] >= batch_size:
        return f'{name} has batch index {high[0]} but batch_size is {batch_size}'
    grid = high[0] + 1
    for size in spatial_shape:
        grid *= size
    if grid >= MAX_LINEAR_KEY:
        return f'the grid [batch={high[0] + 1}, *{list(spatial_shape)}] has more than 2^62 cells'
    return None
