"""Geometry of sparse coordinates: linear keys, kernel offsets, output shapes.

Coordinates are ``[N, 1 + D]`` integer rows ``(batch, c_1, ..., c_D)`` (spconv's
``(batch, z, y, x)`` in 3D). A row's *linear key* is its position in a
row-major ``[batch, *spatial_shape]`` grid, kept in int64 so large grids never
overflow. Kernel offsets are enumerated row-major with the last axis fastest,
the order of spconv's weights ``[out, *kernel, in]``.
"""
import math
import numbers
import operator
from typing import Optional, Sequence, Tuple, Union

import torch

IntOrSequence = Union[int, Sequence[int]]
MAX_LINEAR_KEY = 2**62
GEOMETRY_MINIMUM = {'kernel_size': 1, 'stride': 1, 'padding': 0, 'dilation': 1}


def as_integer(value, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as an ``int``, refusing anything a conversion would change.

    Accepts Python, numpy and torch integers and floats with an integral value
    (``10.0``, as grid sizes computed from a range and a voxel size often are).

    Raises:
        ValueError: a bool, a fractional or non-finite number, a non-number, or a value below ``minimum``.
    """
    if isinstance(value, bool) or str(getattr(value, 'dtype', '')) in ('bool', 'torch.bool'):
        raise ValueError(f'{name} must be an integer, got the bool {value!r}')
    try:
        integer = operator.index(value)   # int, numpy and torch integers
    except TypeError:
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f'{name} must be an integer, got {value!r}; round it explicitly if that is meant') \
                from None
        integer = int(value)
    if minimum is not None and integer < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {integer}')
    return integer


def expand_argument(value: IntOrSequence, dims: int, name: str, minimum: Optional[int] = None) -> Tuple[int, ...]:
    """``3`` -> ``(3, 3, 3)``; a sequence must have ``dims`` entries, each an integer >= ``minimum``.

    Raises:
        ValueError: a wrong number of entries, or an entry :func:`as_integer` refuses.
    """
    try:
        entries = list(value)
    except TypeError:   # a scalar, for every axis
        entries = [value] * dims
    if len(entries) != dims:
        raise ValueError(f'{name} needs {dims} values (one per spatial axis), got {value}')
    return tuple(as_integer(entry, name, minimum) for entry in entries)


def convolution_geometry(dims: int, kernel_size: IntOrSequence, stride: IntOrSequence, padding: IntOrSequence,
                         dilation: IntOrSequence) -> Tuple[Tuple[int, ...], ...]:
    """``(kernel_size, stride, padding, dilation)``, each expanded to ``dims`` checked integers.

    Raises:
        ValueError: naming the argument: a wrong number of values, a non-integer, or a kernel size, stride or
            dilation below 1 or a padding below 0.
    """
    values = (kernel_size, stride, padding, dilation)
    return tuple(expand_argument(value, dims, name, minimum)
                 for value, (name, minimum) in zip(values, GEOMETRY_MINIMUM.items()))


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


def sorted_distinct_keys(indices: torch.Tensor, spatial_shape: Sequence[int],
                         name: str = 'indices') -> Tuple[torch.Tensor, torch.Tensor]:
    """The sorted linear keys of ``[N, 1 + D]`` coordinates and the rows holding them (a stable sort).

    Raises:
        ValueError: when two rows name the same site, with the message the native kernels give.
    """
    keys, order = linear_keys(indices[:, 0], indices[:, 1:], spatial_shape).sort(stable=True)
    repeated = (keys[1:] == keys[:-1]).nonzero()
    if repeated.numel():
        position = repeated[0, 0]
        raise ValueError(f'{name} has duplicate coordinates (rows {order[position].item()} and '
                         f'{order[position + 1].item()}); merge duplicate points first (e.g. voxelize with mean '
                         'pooling)')
    return keys, order


def keys_to_coordinates(keys: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`linear_keys`: ``[M]`` keys -> ``[M, 1 + D]`` int32 ``(batch, c_1, ..., c_D)``."""
    columns = []
    for size in reversed(spatial_shape):
        columns.append(keys % size)
        keys = keys // size
    columns.append(keys)
    return torch.stack(columns[::-1], dim=1).to(torch.int32)
