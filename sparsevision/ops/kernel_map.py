"""Kernel maps of sparse convolution: which input site each output site reads through each kernel tap.

A kernel map is an ``[M, K]`` int32 table (``-1`` where no input site is
there): output-stationary, so a convolution can sum each output's ``K`` taps
in a fixed order and stay deterministic without atomics. Built by merging
sorted linear keys (int64, so large grids never overflow), not by hashing.
"""
from typing import Sequence, Tuple

import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)
from .coordinates import IntOrSequence, convolution_geometry, expand_argument, output_spatial_shape
from .devices import check_same_device
from .map_validation import known_invertible, mark_valid
from .site_validation import check_indices, checked_sites, known_distinct, mark_distinct, mark_on_grid

_kernel_map = torch.ops.sparsevision.kernel_map.default
_downsample_indices = torch.ops.sparsevision.downsample_indices.default
_invert_kernel_map = torch.ops.sparsevision.invert_kernel_map.default


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
    neighbors = _kernel_map(in_indices, out_indices, list(spatial_shape), *map(list, geometry),
                            sites_checked=known_distinct(in_indices))
    mark_distinct(in_indices)
    mark_valid(neighbors, in_indices.shape[0], invertible=known_distinct(out_indices))
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
    out_indices = _downsample_indices(indices, list(spatial_shape), *map(list, geometry),
                                      sites_checked=known_distinct(indices))
    mark_distinct(indices)
    checked = checked_sites.get(indices)
    if checked is not None:
        mark_on_grid(out_indices, checked.bounds[0], out_shape)
    return out_indices, out_shape


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
    inverse = _invert_kernel_map(neighbors, num_inputs, map_checked=known_invertible(neighbors, num_inputs))
    mark_valid(inverse, neighbors.shape[0], invertible=True)
    return inverse


@torch.library.register_fake('sparsevision::kernel_map')
def _kernel_map_fake(in_indices, out_indices, spatial_shape, kernel_size, stride, padding, dilation,
                     sites_checked=False):
    taps = 1
    for size in kernel_size:
        taps *= size
    return out_indices.new_empty(out_indices.shape[0], taps)


@torch.library.register_fake('sparsevision::downsample_indices')
def _downsample_indices_fake(indices, spatial_shape, kernel_size, stride, padding, dilation, sites_checked=False):
    outputs = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty(outputs, indices.shape[1])


@torch.library.register_fake('sparsevision::invert_kernel_map')
def _invert_kernel_map_fake(neighbors, num_inputs, map_checked=False):
    return neighbors.new_empty(num_inputs, neighbors.shape[1])
