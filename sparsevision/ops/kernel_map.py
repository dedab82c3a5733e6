"""Kernel maps of sparse convolution: which input site each output site reads through each kernel tap.

A kernel map is an ``[M, K]`` int32 table (``-1`` where no input site is
there): output-stationary, so a convolution can sum each output's ``K`` taps
in a fixed order and stay deterministic without atomics. Built by merging
sorted linear keys (int64, so large grids never overflow), not by hashing.
"""
from typing import Optional, Sequence, Tuple

import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)
from .coordinates import (MAX_LINEAR_KEY, IntOrSequence, convolution_geometry, expand_argument,
                          output_spatial_shape)
from .devices import check_same_device
from .map_validation import mark_valid

_kernel_map = torch.ops.sparsevision.kernel_map.default
_downsample_indices = torch.ops.sparsevision.downsample_indices.default
_invert_kernel_map = torch.ops.sparsevision.invert_kernel_map.default
INDEX_DTYPES = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)


def check_indices(indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: Optional[int] = None,
                  name: str = 'indices') -> torch.Tensor:
    """Validate ``[N, 1 + D]`` coordinates against their grid; return them as contiguous int32.

    int32 is spconv's dtype; int64, int16, int8 and uint8 coordinates are converted (int64 only when every value
    fits). uint8 cannot hold a negative value, so a negative coordinate computed in uint8 has already wrapped
    around before it gets here: compute coordinates in a signed dtype.

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
    if indices.numel() and not torch.compiler.is_compiling():
        low, high = torch.stack([indices.amin(dim=0), indices.amax(dim=0)]).tolist()   # one read from the device
        if min(low) < 0:
            raise ValueError(f'{name} has negative values (column minima {low})')
        if max(high) >= 2**31:
            raise ValueError(f'{name} values do not fit in int32 (largest magnitude {max(high)})')
        outside = [axis for axis in range(dims) if high[axis + 1] >= spatial_shape[axis]]
        if outside:
            raise ValueError(f'{name} column {outside[0] + 1} reaches {high[outside[0] + 1]} but spatial_shape is '
                             f'{list(spatial_shape)} (coordinates must be < the shape)')
        if batch_size is not None and high[0] >= batch_size:
            raise ValueError(f'{name} has batch index {high[0]} but batch_size is {batch_size}')
        grid = high[0] + 1
        for size in spatial_shape:
            grid *= size
        if grid >= MAX_LINEAR_KEY:
            raise ValueError(f'the grid [batch={high[0] + 1}, *{list(spatial_shape)}] has more than 2^62 cells')
    return indices.to(torch.int32).contiguous()


def build_kernel_map(in_indices: torch.Tensor, out_indices: torch.Tensor, spatial_shape: Sequence[int],
                     kernel_size: IntOrSequence, stride: IntOrSequence = 1, padding: IntOrSequence = 0,
                     dilation: IntOrSequence = 1) -> torch.Tensor:
    """``[M, K]`` int32: the input row output ``m`` reads through tap ``k``, or ``-1``.

    Output site ``o`` reads the input at ``o * stride - padding + tap * dilation``
    (same batch); taps are ordered row-major, last axis fastest, like spconv's
    weights ``[out, *kernel, in]``.

    Args:
        in_indices: ``[N, 1 + D]`` input coordinates (batch first), without duplicates.
        out_indices: ``[M, 1 + D]`` output coordinates.
        spatial_shape: the input grid (``D`` sizes).
        kernel_size, stride, padding, dilation: an int or ``D`` ints.

    Raises:
        ValueError: bad coordinates (see :func:`check_indices`), duplicate input sites, or the two coordinate sets
            on different devices.
    """
    geometry = convolution_geometry(len(spatial_shape), kernel_size, stride, padding, dilation)
    out_shape = output_spatial_shape(spatial_shape, *geometry)
    same_sites = out_indices is in_indices and list(out_shape) == list(spatial_shape)
    check_same_device('build_kernel_map', in_indices=in_indices, out_indices=out_indices)
    in_indices = check_indices(in_indices, spatial_shape, name='in_indices')
    out_indices = in_indices if same_sites else check_indices(out_indices, out_shape, name='out_indices')
    neighbors = _kernel_map(in_indices, out_indices, list(spatial_shape), *map(list, geometry))
    mark_valid(neighbors, in_indices.shape[0])
    return neighbors


def submanifold_kernel_map(indices: torch.Tensor, spatial_shape: Sequence[int], kernel_size: IntOrSequence,
                           dilation: IntOrSequence = 1) -> torch.Tensor:
    """The kernel map of a submanifold convolution: outputs are the inputs, centred odd kernel."""
    dims = len(spatial_shape)
    kernel = expand_argument(kernel_size, dims, 'kernel_size', minimum=1)
    dilations = expand_argument(dilation, dims, 'dilation', minimum=1)
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f'submanifold convolution needs odd kernel sizes to be centred, got {kernel}')
    padding = [k // 2 * d for k, d in zip(kernel, dilations)]
    return build_kernel_map(indices, indices, spatial_shape, kernel, 1, padding, dilations)


def downsample_indices(indices: torch.Tensor, spatial_shape: Sequence[int], kernel_size: IntOrSequence,
                       stride: IntOrSequence, padding: IntOrSequence = 0,
                       dilation: IntOrSequence = 1) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Output sites of a (strided) sparse convolution and the output grid.

    Returns:
        ``[M, 1 + D]`` int32 output coordinates, sorted (batch, then axes), and the output ``spatial_shape``.

    Raises:
        ValueError: bad coordinates, duplicates, or a kernel larger than the padded grid.
    """
    geometry = convolution_geometry(len(spatial_shape), kernel_size, stride, padding, dilation)
    out_shape = output_spatial_shape(spatial_shape, *geometry)
    if any(size <= 0 for size in out_shape):
        raise ValueError(f'kernel {geometry[0]} with dilation {geometry[3]} does not fit grid {list(spatial_shape)} '
                         f'padded by {geometry[2]}')
    indices = check_indices(indices, spatial_shape)
    return _downsample_indices(indices, list(spatial_shape), *map(list, geometry)), out_shape


def invert_kernel_map(neighbors: torch.Tensor, num_inputs: int) -> torch.Tensor:
    """Input-stationary view of a kernel map: ``[num_inputs, K]``, the output each input feeds through each tap.

    An input reaches at most one output per tap, so this is a permutation of the
    map's entries: it drives the input gradient of a convolution and the inverse
    (transposed) convolution without atomics.

    Raises:
        ValueError: a map that is not int32 ``[M, K]``, names inputs outside ``[0, num_inputs)``, or has two
            outputs reading one input through the same tap.
    """
    if neighbors.dim() != 2 or neighbors.dtype != torch.int32:
        raise ValueError(f'neighbors must be an int32 [M, K] kernel map, got {neighbors.dtype} '
                         f'{tuple(neighbors.shape)}')
    inverse = _invert_kernel_map(neighbors, num_inputs)
    mark_valid(inverse, neighbors.shape[0])
    return inverse


@torch.library.register_fake('sparsevision::kernel_map')
def _kernel_map_fake(in_indices, out_indices, spatial_shape, kernel_size, stride, padding, dilation):
    taps = 1
    for size in kernel_size:
        taps *= size
    return out_indices.new_empty(out_indices.shape[0], taps)


@torch.library.register_fake('sparsevision::downsample_indices')
def _downsample_indices_fake(indices, spatial_shape, kernel_size, stride, padding, dilation):
    outputs = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty(outputs, indices.shape[1])


@torch.library.register_fake('sparsevision::invert_kernel_map')
def _invert_kernel_map_fake(neighbors, num_inputs):
    return neighbors.new_empty(num_inputs, neighbors.shape[1])
