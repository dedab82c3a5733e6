"""Voxelization: point clouds ``[N, 3 + C]`` (x, y, z, features...) to sparse voxels, and back.

Conventions follow mmcv's ``Voxelization`` and spconv's ``PointToVoxel``:

* ``voxel_size`` is ``(x, y, z)`` and ``point_cloud_range`` is
  ``(x_min, y_min, z_min, x_max, y_max, z_max)``; the grid has
  ``round((max - min) / voxel_size)`` cells per axis.
* A point falls in cell ``floor((p - min) / voxel_size)`` and is kept when that
  cell lies in the grid: the lower bound is included, the upper bound excluded.
  As in mmcv, the upper bound is the grid's far edge ``min + cells * voxel_size``,
  which differs from ``max`` when the range is not a whole number of voxels.
  This is evaluated in float64 whatever the points' dtype, so which cell a point
  lands in does not depend on float32 rounding.
* Voxel coordinates are int32 ``(z, y, x)``; spatial shapes are ``(D, H, W)``.
* Points whose x, y or z is NaN or infinite are dropped, with one warning per
  call saying how many; NaN in feature columns is not checked and propagates.

Everything is vectorised in PyTorch. Voxels are found by a stable sort of int64
linear keys (no hashing) and means by a sorted segment reduction (no
floating-point atomics), so on CPU the outputs are bitwise identical run to run
and at any thread count.

Mean voxelization reads the points :data:`CHUNK_POINTS` at a time, so its
temporaries follow the chunk and the voxels, not the cloud: each chunk's points
are added to running per-voxel sums, every voxel's sum continuing in input order
from where the previous chunk left it. The means are therefore bitwise the same
whatever the chunk size.
"""
import math
import numbers
import warnings
from typing import NamedTuple, Sequence, Tuple

import torch

from ..ops.coordinates import MAX_LINEAR_KEY, keys_to_coordinates, linear_keys

MAX_INT32 = 2**31 - 1
CHUNK_POINTS = 1 << 20   # points voxelize_mean keys at a time: bounds its per-point temporaries


class VoxelBatch(NamedTuple):
    """Voxels of a batch of point clouds, laid out for a SECOND-style sparse encoder.

    Attributes:
        features: ``[V, 3 + C]`` voxel means (mode ``'mean'``) or ``[V, max_points_per_voxel, 3 + C]``
            zero-padded points (mode ``'hard'``).
        indices: ``[V, 4]`` int32 spconv indices ``(batch, z, y, x)``.
        spatial_shape: ``(D, H, W)``, the grid size in ``(z, y, x)`` order.
        num_points_per_voxel: ``[V]`` int32 points counted in each voxel (capped in mode ``'hard'``).
        point_to_voxel: ``[sum N]`` int64 row of ``features`` for every point of the concatenated clouds,
            ``-1`` for dropped points.
    """
    features: torch.Tensor
    indices: torch.Tensor
    spatial_shape: Tuple[int, int, int]
    num_points_per_voxel: torch.Tensor
    point_to_voxel: torch.Tensor


class _SortedPoints(NamedTuple):
    """Kept points grouped by voxel: ``order`` lists point rows sorted by voxel key, input order within a voxel."""
    order: torch.Tensor
    segment: torch.Tensor
    keys: torch.Tensor
    counts: torch.Tensor
    spatial_shape: Tuple[int, int, int]


def _float_triplets(voxel_size: Sequence[float], point_cloud_range: Sequence[float]):
    try:
        sizes = [float(v) for v in voxel_size]
        bounds = [float(v) for v in point_cloud_range]
    except TypeError as error:
        raise ValueError('voxel_size and point_cloud_range must be sequences of numbers, '
                         f'got {voxel_size!r} and {point_cloud_range!r}') from error
    if len(sizes) != 3:
        raise ValueError(f'voxel_size needs 3 values (x, y, z), got {len(sizes)}: {voxel_size!r}')
    if len(bounds) != 6:
        raise ValueError('point_cloud_range needs 6 values (x_min, y_min, z_min, x_max, y_max, z_max), '
                         f'got {len(bounds)}: {point_cloud_range!r}')
    if not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(f'voxel_size values must be finite and > 0, got {sizes}')
    if not all(math.isfinite(v) for v in bounds):
        raise ValueError(f'point_cloud_range values must be finite, got {bounds}')
    low, high = bounds[:3], bounds[3:]
    if not all(lo < hi for lo, hi in zip(low, high)):
        raise ValueError(f'point_cloud_range minimum must be < maximum on every axis, got min {low} and max {high}')
    return sizes, low, high


def _grid(voxel_size: Sequence[float], point_cloud_range: Sequence[float]):
    """Validated ``(voxel_size, range minimum)`` in (x, y, z) order and the grid ``(D, H, W)``."""
    sizes, low, high = _float_triplets(voxel_size, point_cloud_range)
    shape_xyz = [round((hi - lo) / size) for size, lo, hi in zip(sizes, low, high)]
    if any(cells < 1 or cells > MAX_INT32 for cells in shape_xyz):
        raise ValueError(f'the grid needs 1 to {MAX_INT32} cells per axis, got (x, y, z) = {shape_xyz} '
                         f'from voxel_size {sizes} and point_cloud_range {low + high}')
    if math.prod(shape_xyz) > MAX_LINEAR_KEY:
        raise ValueError(f'the grid has {math.prod(shape_xyz)} cells, more than the 2**62 that int64 keys allow')
    return sizes, low, tuple(shape_xyz[::-1])


def grid_shape(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> Tuple[int, int, int]:
    """The voxel grid ``(D, H, W)`` (z, y, x order) of a range cut into cells of ``voxel_size``.

    Args:
        voxel_size: ``(x, y, z)`` cell edge lengths.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.

    Returns:
        ``round((max - min) / voxel_size)`` per axis, reversed to ``(z, y, x)``.

    Raises:
        ValueError: on malformed sizes or ranges, an axis with no cell, an axis
            over 2**31 - 1 cells (coordinates are int32) or a grid over 2**62 cells.
    """
    return _grid(voxel_size, point_cloud_range)[2]


def _check_points(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(points).__name__}')
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f'{name} must be [N, 3 + C] (x, y, z, features...), got shape {tuple(points.shape)}')
    if not points.is_floating_point():
        raise ValueError(f'{name} must be floating point, got {points.dtype}')


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
    return int(value)


def _voxel_keys(points: torch.Tensor, sizes: Sequence[float], low: Sequence[float],
                spatial_shape: Tuple[int, int, int]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The rows of ``points`` that are finite and inside the grid, their int64 voxel keys, and how many rows have
    a NaN or infinite x, y or z."""
    xyz = points[:, :3].detach().to(torch.float64)
    finite = torch.isfinite(xyz).all(dim=1)
    cells = torch.floor((xyz - xyz.new_tensor(low)) / xyz.new_tensor(sizes))
    inside = finite & ((cells >= 0) & (cells < cells.new_tensor(spatial_shape[::-1]))).all(dim=1)
    kept = inside.nonzero().squeeze(1)
    keys = linear_keys(torch.zeros_like(kept), cells[kept].flip(1).to(torch.int64), spatial_shape)
    return kept, keys, points.shape[0] - int(finite.sum())


def _warn_non_finite(num_non_finite: int, name: str, stacklevel: int) -> None:
    """Say how many points were dropped for a NaN or infinite coordinate; ``stacklevel`` counts from the caller."""
    if num_non_finite:
        warnings.warn(f'{name}: dropped {num_non_finite} point(s) with NaN or infinite x, y or z',
                      stacklevel=stacklevel + 1)


def _sort_points(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                 name: str) -> _SortedPoints:
    """Validate, drop non-finite and out-of-range points, group the rest by voxel key."""
    _check_points(points, name)
    sizes, low, spatial_shape = _grid(voxel_size, point_cloud_range)
    kept, keys, num_non_finite = _voxel_keys(points, sizes, low, spatial_shape)
    _warn_non_finite(num_non_finite, name, stacklevel=4)
    sorted_keys, permutation = torch.sort(keys, stable=True)
    unique_keys, segment, counts = torch.unique_consecutive(sorted_keys, return_inverse=True, return_counts=True)
    return _SortedPoints(kept[permutation], segment, unique_keys, counts, spatial_shape)


def _zyx(keys: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    return keys_to_coordinates(keys, spatial_shape)[:, 1:].contiguous()


def _voxelize_hard(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                   max_points_per_voxel: int, max_voxels: int, name: str = 'points'):
    max_points_per_voxel = _positive_int(max_points_per_voxel, 'max_points_per_voxel')
    max_voxels = _positive_int(max_voxels, 'max_voxels')
    grouped = _sort_points(points, voxel_size, point_cloud_range, name)
    starts = torch.cumsum(grouped.counts, 0) - grouped.counts
    # A stable sort keeps input order within a voxel, so a voxel's first point is its segment start.
    appearance = torch.argsort(grouped.order[starts])
    rank = torch.empty_like(appearance)
    rank[appearance] = torch.arange(appearance.numel(), device=appearance.device)
    point_rank = rank[grouped.segment]
    slot = torch.arange(grouped.order.numel(), device=points.device) - starts[grouped.segment]
    keep = (point_rank < max_voxels) & (slot < max_points_per_voxel)
    kept_points = grouped.order[keep]
    voxel_order = appearance[:max_voxels]
    voxels = points.new_zeros(voxel_order.numel(), max_points_per_voxel, points.shape[1])
    voxels[point_rank[keep], slot[keep]] = points[kept_points]
    num_points = grouped.counts[voxel_order].clamp(max=max_points_per_voxel).to(torch.int32)
    point_to_voxel = torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    point_to_voxel[kept_points] = point_rank[keep]
    return voxels, _zyx(grouped.keys[voxel_order], grouped.spatial_shape), num_points, point_to_voxel


def voxelize_hard(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                  max_points_per_voxel: int, max_voxels: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard voxelization with capped voxels, as mmcv's ``Voxelization(deterministic=True)``.

    Voxels are numbered in the order their first point appears in ``points``.
    Each voxel keeps its first ``max_points_per_voxel`` points in input order;
    once ``max_voxels`` voxels exist, points of further voxels are dropped.
    Points out of range, or with NaN or infinite x, y or z (with a warning), are dropped.

    Args:
        points: ``[N, 3 + C]`` floating-point ``(x, y, z, features...)``.
        voxel_size: ``(x, y, z)`` cell edge lengths.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``; min included, max excluded.
        max_points_per_voxel: points kept per voxel, >= 1.
        max_voxels: voxels kept, >= 1.

    Returns:
        ``voxels [V, max_points_per_voxel, 3 + C]`` (zero-padded, differentiable with respect to ``points``),
        ``coordinates [V, 3]`` int32 ``(z, y, x)`` and ``num_points_per_voxel [V]`` int32, with ``V <= max_voxels``.

    Raises:
        ValueError: on malformed points, sizes, ranges or caps.
    """
    return _voxelize_hard(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)[:3]


class _VoxelSums(NamedTuple):
    """Running totals of mean voxelization: sorted voxel keys, float64 sums of their points' columns, counts."""
    keys: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor


def _add_chunk(totals: _VoxelSums, keys: torch.Tensor, values: torch.Tensor) -> _VoxelSums:
    """Add points (``keys [n]``, float64 ``values [n, C]``) to the running totals.

    A stable sort puts each voxel's running sum before its new points, which follow in input order, so the
    segment sum continues every voxel's sum exactly as one pass over all points would.
    """
    sorted_keys, order = torch.sort(torch.cat([totals.keys, keys]), stable=True)
    merged_keys, segment, lengths = torch.unique_consecutive(sorted_keys, return_inverse=True, return_counts=True)
    if merged_keys.numel() == 0:   # segment_reduce rejects empty input
        return totals
    sums = torch.segment_reduce(torch.cat([totals.sums, values])[order], 'sum', lengths=lengths, axis=0)
    counts = torch.zeros_like(merged_keys).index_add_(0, segment,
                                                      torch.cat([totals.counts, torch.ones_like(keys)])[order])
    return _VoxelSums(merged_keys, sums, counts)


def _voxelize_mean(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                   name: str = 'points'):
    """Mean voxelization, :data:`CHUNK_POINTS` points at a time (see the module docstring)."""
    _check_points(points, name)
    sizes, low, spatial_shape = _grid(voxel_size, point_cloud_range)
    no_keys = points.new_empty(0, dtype=torch.int64)
    totals = _VoxelSums(no_keys, points.new_empty(0, points.shape[1], dtype=torch.float64), no_keys)
    # Holds each kept point's voxel key until all voxels are known, then its voxel row.
    point_to_voxel = torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    num_non_finite = 0
    for start in range(0, points.shape[0], CHUNK_POINTS):
        chunk = points[start:start + CHUNK_POINTS]
        kept, keys, chunk_non_finite = _voxel_keys(chunk, sizes, low, spatial_shape)
        num_non_finite += chunk_non_finite
        point_to_voxel[start + kept] = keys
        totals = _add_chunk(totals, keys, chunk[kept].to(torch.float64))
    _warn_non_finite(num_non_finite, name, stacklevel=3)
    for chunk in point_to_voxel.split(CHUNK_POINTS):
        kept = chunk >= 0
        chunk[kept] = torch.searchsorted(totals.keys, chunk[kept])
    means = totals.sums / totals.counts.unsqueeze(1)
    return means.to(points.dtype), _zyx(totals.keys, spatial_shape), point_to_voxel, totals.counts


def voxelize_mean(points: torch.Tensor, voxel_size: Sequence[float],
                  point_cloud_range: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic voxelization: every in-range point counts, each voxel holds the mean of its points.

    The mean is a sorted segment reduction accumulated in float64, then cast
    back to the points' dtype.
    Points out of range, or with NaN or infinite x, y or z (with a warning), are dropped.

    Args:
        points: ``[N, 3 + C]`` floating-point ``(x, y, z, features...)``.
        voxel_size: ``(x, y, z)`` cell edge lengths.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``; min included, max excluded.

    Returns:
        ``voxel_features [V, 3 + C]`` (differentiable with respect to ``points``),
        ``coordinates [V, 3]`` int32 ``(z, y, x)`` sorted by linear key, and
        ``point_to_voxel [N]`` int64 voxel row of each point, ``-1`` for dropped points.

    Raises:
        ValueError: on malformed points, sizes or ranges.
    """
    return _voxelize_mean(points, voxel_size, point_cloud_range)[:3]


def voxelize_batch(points_list: Sequence[torch.Tensor], voxel_size: Sequence[float],
                   point_cloud_range: Sequence[float], mode: str = 'mean', **kwargs) -> VoxelBatch:
    """Voxelize each point cloud of a batch and stack the results with a batch column.

    Args:
        points_list: point clouds ``[N_b, 3 + C]``, same ``C``, dtype and device.
        voxel_size: ``(x, y, z)`` cell edge lengths.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
        mode: ``'mean'`` (:func:`voxelize_mean`) or ``'hard'`` (:func:`voxelize_hard`).
        **kwargs: ``max_points_per_voxel`` and ``max_voxels`` (per sample) for mode ``'hard'``.

    Returns:
        A :class:`VoxelBatch`; voxels are ordered by sample, then as the mode orders them.

    Raises:
        ValueError: on an empty list, mismatched clouds, an unknown mode or wrong keyword arguments,
            and on everything the per-sample function rejects.
    """
    if mode not in ('mean', 'hard'):
        raise ValueError(f"mode must be 'mean' or 'hard', got {mode!r}")
    expected = {'max_points_per_voxel', 'max_voxels'} if mode == 'hard' else set()
    if set(kwargs) != expected:
        raise ValueError(f'mode {mode!r} takes keyword arguments {sorted(expected)}, got {sorted(kwargs)}')
    if len(points_list) == 0:
        raise ValueError('points_list is empty: pass at least one point cloud')
    for index, points in enumerate(points_list):
        _check_points(points, f'points_list[{index}]')
    first = points_list[0]
    for index, points in enumerate(points_list):
        if (points.shape[1], points.dtype, points.device) != (first.shape[1], first.dtype, first.device):
            raise ValueError(f'points_list[{index}] is {tuple(points.shape)} {points.dtype} on {points.device}, but '
                             f'points_list[0] is {tuple(first.shape)} {first.dtype} on {first.device}: '
                             'all clouds need the same columns, dtype and device')
    features, indices, counts, point_to_voxel = [], [], [], []
    num_voxels = 0
    for index, points in enumerate(points_list):
        name = f'points_list[{index}]'
        if mode == 'hard':
            voxels, coordinates, num_points, to_voxel = _voxelize_hard(points, voxel_size, point_cloud_range,
                                                                       name=name, **kwargs)
        else:
            voxels, coordinates, to_voxel, num_points = _voxelize_mean(points, voxel_size, point_cloud_range, name)
        batch_column = coordinates.new_full((coordinates.shape[0], 1), index)
        features.append(voxels)
        indices.append(torch.cat([batch_column, coordinates], dim=1))
        counts.append(num_points.to(torch.int32))
        point_to_voxel.append(torch.where(to_voxel >= 0, to_voxel + num_voxels, to_voxel))
        num_voxels += voxels.shape[0]
    return VoxelBatch(torch.cat(features), torch.cat(indices), grid_shape(voxel_size, point_cloud_range),
                      torch.cat(counts), torch.cat(point_to_voxel))


def devoxelize(voxel_features: torch.Tensor, point_to_voxel: torch.Tensor) -> torch.Tensor:
    """Give every point the features of its voxel (the inverse lookup of voxelization).

    Args:
        voxel_features: ``[V, ...]`` per-voxel features, usually ``[V, C]``.
        point_to_voxel: ``[N]`` int64 voxel row of each point in ``[-1, V)``; ``-1`` marks a dropped point.

    Returns:
        ``[N, ...]`` features, zero rows for dropped points; differentiable with
        respect to ``voxel_features`` (dropped points pass no gradient). The
        gradient is an ``index_add``: deterministic on CPU, atomic on CUDA.

    Raises:
        ValueError: on a wrong shape, dtype, device or out-of-range index.
    """
    if not isinstance(voxel_features, torch.Tensor) or voxel_features.dim() < 1:
        raise ValueError('voxel_features must be a tensor [V, ...] with one row per voxel')
    if point_to_voxel.dim() != 1 or point_to_voxel.dtype != torch.int64:
        raise ValueError(f'point_to_voxel must be a 1-D int64 tensor, got shape {tuple(point_to_voxel.shape)} '
                         f'and dtype {point_to_voxel.dtype}')
    if point_to_voxel.device != voxel_features.device:
        raise ValueError(f'point_to_voxel is on {point_to_voxel.device} but voxel_features are on '
                         f'{voxel_features.device}')
    num_voxels = voxel_features.shape[0]
    if point_to_voxel.numel():
        low, high = (value.item() for value in torch.aminmax(point_to_voxel))
        if low < -1 or high >= num_voxels:
            raise ValueError(f'point_to_voxel values must lie in [-1, {num_voxels}), got range [{low}, {high}]')
    padded = torch.cat([voxel_features, voxel_features.new_zeros(1, *voxel_features.shape[1:])])
    return padded.index_select(0, torch.where(point_to_voxel >= 0, point_to_voxel, num_voxels))
