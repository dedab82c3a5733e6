"""Kernel maps for layers: built once per coordinate set and geometry, then reused."""
import math
from typing import Optional, Tuple

from .. import ops
from .tensor import KernelMap, SparseTensor


def convolution_map(x: SparseTensor, kernel_size: Tuple[int, ...], stride: Tuple[int, ...],
                    padding: Tuple[int, ...], dilation: Tuple[int, ...], submanifold: bool,
                    indice_key: Optional[str] = None) -> KernelMap:
    """The kernel map of a (submanifold or strided) convolution or pooling on ``x``'s sites.

    Cached on ``x``'s coordinate set. With ``indice_key`` it is also registered
    in ``x.indice_dict`` (spconv's explicit reuse); an existing entry is reused.

    Raises:
        ValueError: when ``indice_key`` names a map built on other sites or with another kernel.
    """
    if indice_key is not None and indice_key in x.indice_dict:
        kernel_map = x.indice_dict[indice_key]
        if kernel_map.in_maps is not x.kernel_maps or kernel_map.neighbors.shape[1] != math.prod(kernel_size):
            raise ValueError(f'indice_key {indice_key!r} belongs to a layer on other sites or with another kernel; '
                             'give each coordinate set and kernel geometry its own key')
        return kernel_map
    key = ('submanifold' if submanifold else 'convolution', kernel_size, stride, padding, dilation)
    kernel_map = x.kernel_maps.get(key)
    if kernel_map is None:
        kernel_map = _build(x, kernel_size, stride, padding, dilation, submanifold)
        x.kernel_maps[key] = kernel_map
    if indice_key is not None:
        x.indice_dict[indice_key] = kernel_map
    return kernel_map


def _build(x, kernel_size, stride, padding, dilation, submanifold) -> KernelMap:
    if submanifold:
        neighbors = ops.submanifold_kernel_map(x.indices, x.spatial_shape, kernel_size, dilation)
        # a centred kernel is symmetric: input n feeds output m through tap k iff m feeds n through tap K-1-k
        return KernelMap(x.indices, x.spatial_shape, x.indices, x.spatial_shape, neighbors,
                         neighbors.flip(1).contiguous(), x.kernel_maps, x.kernel_maps)
    out_indices, out_shape = ops.downsample_indices(x.indices, x.spatial_shape, kernel_size, stride, padding,
                                                    dilation)
    neighbors = ops.build_kernel_map(x.indices, out_indices, x.spatial_shape, kernel_size, stride, padding, dilation)
    return KernelMap(x.indices, x.spatial_shape, out_indices, list(out_shape), neighbors,
                     ops.invert_kernel_map(neighbors, x.indices.shape[0]), x.kernel_maps, {})


def inverse_convolution_map(x: SparseTensor, indice_key: str) -> KernelMap:
    """The map of the strided convolution registered under ``indice_key``, turned around.

    Raises:
        ValueError: when no convolution registered ``indice_key`` or ``x`` is not on its output sites.
    """
    forward = x.indice_dict.get(indice_key)
    if forward is None:
        raise ValueError(f'no sparse convolution registered indice_key {indice_key!r}; an inverse convolution needs '
                         'the strided convolution it undoes to use the same indice_key')
    if forward.out_maps is not x.kernel_maps:
        raise ValueError(f'the input of this inverse convolution is not on the output sites of the convolution '
                         f'registered as {indice_key!r}')
    return forward.turned_around()
