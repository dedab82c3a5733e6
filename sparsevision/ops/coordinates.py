"""Geometry of sparse coordinates: linear keys, kernel offsets, output shapes.

Coordinates are ``[N, 1 + D]`` integer rows ``(batch, c_1, ..., c_D)`` (spconv's
``(batch, z, y, x)`` in 3D). A row's *linear key* is its position in a
row-major ``[batch, *spatial_shape]`` grid, kept in int64 so large grids never
overflow. Kernel offsets are enumerated row-major with the last axis fastest,
the order of spconv's weights ``[out, *kernel, in]``.
"""
import math
from typing import Sequence, Tuple, Union

import torch

IntOrSequence = Union[int, Sequence[int]]
MAX_LINEAR_KEY = 2**62


def expand_argument(value: IntOrSequence, dims: int, name: str) -> Tuple[int, ...]:
    """``3`` -> ``(3, 3, 3)``; a sequence must have ``dims`` entries."""
    values = (value,) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f'{name} needs {dims} values (one per spatial axis), got {value}')
    return values


def output_spatial_shape(spatial_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                         padding: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """The convolution output grid: ``(size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1``."""
    return tuple((size + 2 * pad - dil * (k - 1) - 1) // s + 1
                 for size, k, s, pad, dil in zip(spatial_shape, kernel_size, stride, padding, dilation))


def kernel_offsets(kernel_size: Sequence[int], dilation: Sequence[int], device=None) -> torch.Tensor:
    """``[K, D]`` int64 offsets ``index * dilation`` of every kernel tap, last axis fastest."""
    axes = [torch.arange(k, device=device, dtype=torch.int64) * d for k, d in zip(kernel_size, dilation)]
    return torch.cartesian_prod(*axes).reshape(math.prod(kernel_size), len(axes))


def linear_keys(batch: torch.Tensor, coordinates: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """int64 row-major keys of ``batch [...]`` and ``coordinates [..., D]`` in ``[batch, *spatial_shape]``."""
    keys = batch.to(torch.int64)
    for axis, size in enumerate(spatial_shape):
        keys = keys * size + coordinates[..., axis].to(torch.int64)
    return keys


def keys_to_coordinates(keys: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`linear_keys`: ``[M]`` keys -> ``[M, 1 + D]`` int32 ``(batch, c_1, ..., c_D)``."""
    columns = []
    for size in reversed(spatial_shape):
        columns.append(keys % size)
        keys = keys // size
    columns.append(keys)
    return torch.stack(columns[::-1], dim=1).to(torch.int32)
