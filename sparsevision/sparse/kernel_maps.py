"""Kernel maps for layers: built once per coordinate set and geometry, then reused."""
from typing import Optional, Tuple

import torch

from .. import ops
from ..ops.map_validation import mark_valid
from .tensor import KernelMap, KernelMapCache, SparseTensor


def convolution_map(x: SparseTensor, kernel_size: Tuple[int, ...], stride: Tuple[int, ...],
                    padding: Tuple[int, ...], dilation: Tuple[int, ...], submanifold: bool,
                    indice_key: Optional[str] = None) -> KernelMap:
    """The kernel map of a (submanifold or strided) convolution or pooling on ``x``'s sites.

    Cached on ``x``'s coordinate set. With ``indice_key`` it is also registered
    in ``x.indice_dict`` (spconv's explicit reuse); an existing entry is reused.

    Raises:
        ValueError: when ``indice_key`` names a map built on other sites or with another geometry.
    """
    geometry = map_geometry(kernel_size, stride, padding, dilation, submanifold)
    if indice_key is not None and indice_key in x.indice_dict:
        kernel_map = x.indice_dict[indice_key]
        if not is_on_sites(x, kernel_map.in_maps, kernel_map.in_indices):
            raise ValueError(f'indice_key {indice_key!r} belongs to a layer on other sites; give each coordinate set '
                             'its own key')
        if kernel_map.geometry != geometry:
            raise ValueError(f'indice_key {indice_key!r} belongs to a layer with another geometry '
                             f'({describe(kernel_map.geometry)}) than this one ({describe(geometry)}); give each '
                             'kernel geometry its own key')
        return kernel_map
    kernel_map = x.kernel_maps.get(geometry)
    if kernel_map is None:
        kernel_map = _build(x, geometry)
        x.kernel_maps[geometry] = kernel_map
    if indice_key is not None:
        x.indice_dict[indice_key] = kernel_map
    return kernel_map


def map_geometry(kernel_size, stride, padding, dilation, submanifold: bool) -> Tuple:
    """The cache key of a map: ``(kind, kernel_size, stride, padding, dilation)``.

    A submanifold map ignores the layer's stride and padding (it is centred and keeps the sites), so they are
    recorded as the ones it uses: layers differing only in those share one map.
    """
    if submanifold:
        return ('submanifold', kernel_size, (1,) * len(kernel_size),
                tuple(k // 2 * d for k, d in zip(kernel_size, dilation)), dilation)
    return ('convolution', kernel_size, stride, padding, dilation)


def describe(geometry: Tuple) -> str:
    """A map geometry in words, for error messages."""
    kind, kernel_size, stride, padding, dilation = geometry
    return f'{kind}, kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}'


def is_on_sites(x: SparseTensor, maps: KernelMapCache, indices: torch.Tensor) -> bool:
    """Whether ``x`` is on the coordinate set whose cache is ``maps`` and whose coordinates are ``indices``.

    The cache identifies the set; the row count catches ``x.indices`` replaced since the map was built.
    """
    return maps is x.kernel_maps and indices.shape[0] == x.indices.shape[0]


def _build(x, geometry) -> KernelMap:
    kind, kernel_size, stride, padding, dilation = geometry
    if kind == 'submanifold':
        neighbors = ops.submanifold_kernel_map(x.indices, x.spatial_shape, kernel_size, dilation)
        x.kernel_maps.sites_distinct = True   # the map build refuses duplicates
        # a centred kernel is symmetric: input n feeds output m through tap k iff m feeds n through tap K-1-k
        inverse = neighbors.flip(1).contiguous()
        mark_valid(inverse, x.indices.shape[0], invertible=True)
        return KernelMap(x.indices, x.spatial_shape, x.indices, x.spatial_shape, neighbors, inverse, x.kernel_maps,
                         x.kernel_maps, geometry)
    out_indices, out_shape = ops.downsample_indices(x.indices, x.spatial_shape, kernel_size, stride, padding,
                                                    dilation)
    x.kernel_maps.sites_distinct = True   # downsample_indices refuses duplicates
    neighbors = ops.build_kernel_map(x.indices, out_indices, x.spatial_shape, kernel_size, stride, padding, dilation)
    return KernelMap(x.indices, x.spatial_shape, out_indices, list(out_shape), neighbors,
                     ops.invert_kernel_map(neighbors, x.indices.shape[0]), x.kernel_maps,
                     KernelMapCache(sites_distinct=True), geometry)


def inverse_convolution_map(x: SparseTensor, indice_key: str, kernel_size: Tuple[int, ...]) -> KernelMap:
    """The map of the convolution registered under ``indice_key``, turned around.

    Raises:
        ValueError: when no convolution registered ``indice_key``, ``x`` is not on its output sites, or its kernel
            size is not ``kernel_size`` (the inverse convolution's).
    """
    forward = x.indice_dict.get(indice_key)
    if forward is None:
        raise ValueError(f'no sparse convolution registered indice_key {indice_key!r}; an inverse convolution needs '
                         'the strided convolution it undoes to use the same indice_key')
    if not is_on_sites(x, forward.out_maps, forward.out_indices):
        raise ValueError(f'the input of this inverse convolution is not on the output sites of the convolution '
                         f'registered as {indice_key!r}')
    if forward.kernel_size != tuple(kernel_size):
        raise ValueError(f'this inverse convolution has kernel_size {tuple(kernel_size)} but the convolution '
                         f'registered as {indice_key!r} has {forward.kernel_size}; an inverse convolution must have '
                         'the kernel size of the convolution it undoes (as in spconv)')
    return forward.turned_around()
