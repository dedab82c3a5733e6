"""Neighbourhood attention (NA) on 1-, 2- and 3-D grids, with NATTEN's names, arguments and window rules.

Each query attends to the ``kernel_size`` keys nearest to it along every axis, clamped (shifted inward) at the
borders rather than zero-padded; with ``dilation`` ``d`` an axis splits into ``d`` interleaved groups and a query's
window lies in its own group (DiNAT); ``is_causal`` keeps the keys at or before the query along an axis. The optional
relative positional bias ``rpb`` ``[heads, 2k-1, ...]`` adds ``rpb[head, key - query + k - 1]`` (in group steps)
to each score, as NATTEN up to 0.17 and the NAT/DiNAT checkpoints define it (NATTEN 0.20 dropped it).

The windows become the index of :func:`~sparsevision.ops.indexed_attention`, built once per grid and cached.
"""
import functools
import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .indexed_attention import indexed_attention
from .map_validation import mark_valid

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def na1d(query, key, value, kernel_size: IntOrTuple, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """1-D neighbourhood attention of ``[B, L, heads, head_dim]`` tensors (see :func:`neighborhood_attention`)."""
    return neighborhood_attention(query, key, value, kernel_size, dilation, is_causal, rpb, scale, dims=1)


def na2d(query, key, value, kernel_size: IntOrTuple, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """2-D neighbourhood attention of ``[B, H, W, heads, head_dim]`` tensors (see :func:`neighborhood_attention`)."""
    return neighborhood_attention(query, key, value, kernel_size, dilation, is_causal, rpb, scale, dims=2)


def na3d(query, key, value, kernel_size: IntOrTuple, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """3-D neighbourhood attention of ``[B, T, H, W, heads, head_dim]`` tensors (see
    :func:`neighborhood_attention`)."""
    return neighborhood_attention(query, key, value, kernel_size, dilation, is_causal, rpb, scale, dims=3)


def neighborhood_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
                           dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
                           rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                           dims: Optional[int] = None) -> torch.Tensor:
    """Each query attends to its window of keys on a ``dims``-D grid.

    Args:
        query, key: ``[B, *grid, heads, head_dim]`` (NATTEN's "heads last" layout); value: ``[B, *grid, heads, Dv]``.
        kernel_size: odd window size per axis (an int for all).
        dilation: per axis; ``kernel_size * dilation`` must fit the grid.
        is_causal: per axis; keys after the query along that axis are left out.
        rpb: ``[heads, 2 * k_1 - 1, ..., 2 * k_dims - 1]`` relative positional bias, or None (not with causal axes).
        scale: score factor, ``head_dim ** -0.5`` by default.
        dims: number of grid axes (default: ``query.dim() - 3``).

    Returns:
        ``[B, *grid, heads, Dv]``.

    Raises:
        ValueError: mismatched shapes, an even kernel size, a window larger than the grid, or a bias of the wrong
            shape (or with a causal axis).
    """
    dims = query.dim() - 3 if dims is None else dims
    if dims not in (1, 2, 3) or query.dim() != dims + 3:
        raise ValueError(f'{dims}-D neighbourhood attention takes [batch, *{dims} grid axes, heads, head_dim] tensors, '
                         f'got query of shape {tuple(query.shape)}')
    if key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(f'key {tuple(key.shape)} and value {tuple(value.shape)} must have the batch, grid and heads '
                         f'of query {tuple(query.shape)} (and key its head_dim)')
    grid = tuple(query.shape[1:dims + 1])
    kernel, dilations, causal = window_arguments(grid, kernel_size, dilation, is_causal)
    batch, heads = query.shape[0], query.shape[-2]
    index, bias_slot = window_index(grid, kernel, dilations, causal, batch, query.device)
    bias = None
    if rpb is not None:
        expected = (heads, *(2 * k - 1 for k in kernel))
        if tuple(rpb.shape) != expected:
            raise ValueError(f'rpb must be [heads, 2k-1 per axis] = {list(expected)}, got {tuple(rpb.shape)}')
        if any(causal):
            raise ValueError('a relative positional bias with causal axes is not defined (NATTEN refuses it too)')
        per_site = rpb.reshape(heads, -1)[:, bias_slot].transpose(0, 1)          # [sites, heads, slots]
        bias = per_site.to(query.dtype).repeat(batch, 1, 1)
    rows = batch * math.prod(grid)
    out = indexed_attention(query.reshape(rows, heads, query.shape[-1]), key.reshape(rows, heads, key.shape[-1]),
                            value.reshape(rows, heads, value.shape[-1]), index, bias, scale)
    return out.reshape(*query.shape[:-1], value.shape[-1])


def window_arguments(grid: Tuple[int, ...], kernel_size: IntOrTuple, dilation: IntOrTuple,
                     is_causal: BoolOrTuple) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[bool, ...]]:
    """Per-axis ``(kernel, dilation, causal)``, checked against the grid.

    Raises:
        ValueError: a wrong number of values, an even or non-positive kernel, a dilation below 1, or a window
            (``kernel * dilation``) larger than its axis.
    """
    dims = len(grid)

    def per_axis(value, name):
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims
        if len(values) != dims:
            raise ValueError(f'{name} needs {dims} values (one per axis), got {value}')
        return values

    kernel, dilations = per_axis(kernel_size, 'kernel_size'), per_axis(dilation, 'dilation')
    causal = tuple(bool(flag) for flag in per_axis(is_causal, 'is_causal'))
    for axis, (size, k, d) in enumerate(zip(grid, kernel, dilations)):
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f'kernel_size must be odd and positive (as NATTEN requires), got {k} on axis {axis}')
        if not isinstance(d, int) or d < 1:
            raise ValueError(f'dilation must be an integer >= 1, got {d} on axis {axis}')
        if k * d > size:
            raise ValueError(f'kernel_size * dilation = {k} * {d} exceeds the grid size {size} on axis {axis}; use a '
                             'smaller window or pad the input (NeighborhoodAttention modules pad for you)')
    return kernel, dilations, causal


def window_index(grid: Tuple[int, ...], kernel: Tuple[int, ...], dilations: Tuple[int, ...],
                 causal: Tuple[bool, ...], batch: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(index [batch * sites, slots] int32, bias_slot [sites, slots] int64)`` of every query's window.

    Slots run row-major over the window (last axis fastest), as NATTEN orders its attention weights; ``bias_slot``
    is the flat position in the ``[2k-1, ...]`` bias table. The per-image tables are cached; the batched index is
    in range by construction, so it is recorded as checked (no device read).
    """
    local, bias_slot = window_tables(grid, kernel, dilations, causal, device)
    sites = local.shape[0]
    rows = local[None] + sites * torch.arange(batch, device=device, dtype=torch.int32)[:, None, None]
    index = torch.where(local >= 0, rows, -1).reshape(batch * sites, local.shape[1])
    mark_valid(index, batch * sites)
    return index, bias_slot


@functools.lru_cache(maxsize=32)
def window_tables(grid: Tuple[int, ...], kernel: Tuple[int, ...], dilations: Tuple[int, ...],
                  causal: Tuple[bool, ...], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """One image's ``(key site [sites, slots] int32, -1 for empty slots; bias_slot [sites, slots] int64)``."""
    keys, offsets = zip(*(axis_windows(*arguments) for arguments in zip(grid, kernel, dilations, causal)))
    sites, slots = math.prod(grid), math.prod(kernel)
    key_site = torch.zeros(sites, slots, dtype=torch.int64)
    bias_slot = torch.zeros(sites, slots, dtype=torch.int64)
    present = torch.ones(sites, slots, dtype=torch.bool)
    for axis, (axis_keys, axis_offsets) in enumerate(zip(keys, offsets)):
        shape = [1] * (2 * len(grid))            # this axis' [length, kernel] placed in [*grid, *kernel]
        shape[axis], shape[len(grid) + axis] = grid[axis], kernel[axis]

        def spread(table):
            return table.reshape(shape).expand(*grid, *kernel).reshape(sites, slots)

        key_site = key_site * grid[axis] + spread(axis_keys.clamp(min=0))
        bias_slot = bias_slot * (2 * kernel[axis] - 1) + spread(axis_offsets)
        present &= spread(axis_keys >= 0)
    return torch.where(present, key_site, -1).to(torch.int32).to(device), bias_slot.to(device)


def axis_windows(length: int, kernel: int, dilation: int, causal: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(keys [length, kernel], offsets [length, kernel])`` along one axis: the key positions of each query's window
    (``-1`` for slots a causal window leaves empty) and their bias-table positions ``key - query + kernel - 1`` in
    group steps."""
    position = torch.arange(length)
    group, step = position % dilation, position // dilation
    group_length = (length - group + dilation - 1) // dilation
    if causal:
        start = step - kernel + 1               # the window ends at the query; early queries have fewer keys
    else:
        start = torch.minimum((step - kernel // 2).clamp(min=0), group_length - kernel)
    key_step = start[:, None] + torch.arange(kernel)
    keys = torch.where(key_step >= 0, key_step * dilation + group[:, None], -1)
    return keys, key_step - step[:, None] + kernel - 1
