"""SparseTensor: features on occupied sites, with spconv's fields and an automatic kernel-map cache."""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..ops import check_indices
from ..ops.coordinates import as_integer, sorted_distinct_keys
from ..ops.devices import check_same_device


class KernelMapCache(dict):
    """The kernel maps built on one coordinate set, keyed by kind and geometry, shared by every tensor on it.

    Attributes:
        sites_distinct: no two rows are known to name the same site. Building any kernel map on the sites checks
            that (and refuses duplicates), so does :meth:`SparseTensor.check_distinct_sites`, once; sites distinct
            by construction (a strided convolution's outputs, :meth:`SparseTensor.from_dense`) start out known.
    """

    def __init__(self, sites_distinct: bool = False):
        super().__init__()
        self.sites_distinct = sites_distinct


@dataclass
class KernelMap:
    """How one sparse convolution connects its input and output sites.

    Attributes:
        in_indices: ``[N, 1 + D]`` input coordinates.
        in_spatial_shape: input grid.
        out_indices: ``[M, 1 + D]`` output coordinates.
        out_spatial_shape: output grid.
        neighbors: ``[M, K]`` int32, the input row each output reads per tap (``-1`` none).
        inverse: ``[N, K]`` int32, the output row each input feeds per tap (``-1`` none).
        in_maps: the kernel-map cache of the input coordinate set (identifies it).
        out_maps: the kernel-map cache of the output coordinate set.
        geometry: ``(kind, kernel_size, stride, padding, dilation)`` of the layer that built it, ``kind`` one of
            ``'submanifold'``, ``'convolution'`` and ``'inverse'`` (turned around).
    """

    in_indices: torch.Tensor
    in_spatial_shape: List[int]
    out_indices: torch.Tensor
    out_spatial_shape: List[int]
    neighbors: torch.Tensor
    inverse: torch.Tensor
    in_maps: KernelMapCache
    out_maps: KernelMapCache
    geometry: Tuple

    @property
    def kernel_size(self) -> Tuple[int, ...]:
        return self.geometry[1]

    def turned_around(self) -> 'KernelMap':
        """The map of the inverse (transposed) convolution: outputs become inputs."""
        return KernelMap(self.out_indices, self.out_spatial_shape, self.in_indices, self.in_spatial_shape,
                         self.inverse, self.neighbors, self.out_maps, self.in_maps, ('inverse', *self.geometry[1:]))


class SparseTensor:
    """Features ``[N, C]`` on the occupied sites ``indices [N, 1 + D]`` of a batch of grids (spconv's layout).

    ``indices`` rows are ``(batch, z, y, x)`` in 3D, int32. Every coordinate set
    carries a cache of the kernel maps built on it (keyed by kernel size,
    stride, padding and dilation), so layers with the same geometry reuse maps
    without any ``indice_key``. ``indice_dict`` keeps spconv's meaning: maps
    registered under an explicit key, shared by every tensor derived from this
    one (``SparseInverseConv`` finds its paired convolution there).

    Args:
        features: ``[N, C]`` features.
        indices: ``[N, 1 + D]`` integer coordinates, batch first.
        spatial_shape: the grid size per spatial axis (integers; ``10.0`` is taken as 10, ``10.7`` refused).
        batch_size: number of samples; batch indices must be smaller.
        grid, voxel_num: spconv's positional arguments, accepted and ignored.
        indice_dict: maps shared with other tensors (spconv's argument).
        **spconv_options: other spconv-only arguments (``benchmark``, ...), accepted and ignored.

    Two rows naming the same site (batch and coordinates) are refused by every
    operation that depends on sites being distinct (convolution, pooling,
    :meth:`dense`, global pooling), not by the constructor: checking costs a
    sort, which building a kernel map does anyway.

    Raises:
        ValueError: mismatched rows, float or malformed indices (see :func:`~sparsevision.ops.check_indices`),
            coordinates outside ``spatial_shape``, batch indices ``>= batch_size``, or a fractional, boolean or
            negative ``batch_size`` or grid size.
    """

    def __init__(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int],
                 batch_size: int, grid=None, voxel_num=None, indice_dict: Optional[dict] = None, **spconv_options):
        spatial_shape = [as_integer(size, f'spatial_shape[{axis}]') for axis, size in enumerate(spatial_shape)]
        batch_size = as_integer(batch_size, 'batch_size', minimum=0)
        if features.dim() != 2:
            raise ValueError(f'features must be [N, C], got shape {tuple(features.shape)}')
        if indices.dim() != 2 or features.shape[0] != indices.shape[0]:
            raise ValueError(f'features have {features.shape[0]} rows but indices have shape {tuple(indices.shape)}; '
                             'each feature row needs one coordinate row')
        check_same_device('SparseTensor', features=features, indices=indices)
        indices = check_indices(indices, spatial_shape, batch_size)
        self._init(features, indices, spatial_shape, batch_size, {} if indice_dict is None else indice_dict,
                   KernelMapCache())

    def _init(self, features, indices, spatial_shape, batch_size, indice_dict, kernel_maps):
        self._features = features
        self.indices = indices
        self.spatial_shape = spatial_shape
        self.batch_size = batch_size
        self.indice_dict = indice_dict
        self.kernel_maps = kernel_maps

    @classmethod
    def _derived(cls, features, indices, spatial_shape, batch_size, indice_dict, kernel_maps) -> 'SparseTensor':
        """A tensor on coordinates already validated (no checks)."""
        tensor = cls.__new__(cls)
        tensor._init(features, indices, list(spatial_shape), batch_size, indice_dict, kernel_maps)
        return tensor

    @property
    def features(self) -> torch.Tensor:
        return self._features

    @features.setter
    def features(self, value: torch.Tensor) -> None:
        if value.dim() != 2 or value.shape[0] != self.indices.shape[0]:
            raise ValueError(f'new features must be [{self.indices.shape[0]}, C], got {tuple(value.shape)}')
        check_same_device('SparseTensor.features', features=value, indices=self.indices)
        self._features = value

    @property
    def spatial_size(self) -> int:
        return math.prod(self.spatial_shape)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.spatial_shape)

    def replace_feature(self, features: torch.Tensor) -> 'SparseTensor':
        """The same sites (and cached kernel maps) with new features ``[N, C']``."""
        if features.dim() != 2 or features.shape[0] != self.indices.shape[0]:
            raise ValueError(f'replacement features must be [{self.indices.shape[0]}, C], got {tuple(features.shape)}')
        check_same_device('replace_feature', features=features, indices=self.indices)
        return self._derived(features, self.indices, self.spatial_shape, self.batch_size, self.indice_dict,
                             self.kernel_maps)

    def on_grid(self, spatial_shape: Sequence[int]) -> 'SparseTensor':
        """The same sites and features on a grid at least as large on every axis.

        The coordinates stay valid, so nothing is checked again, and the kernel maps built on the larger grid are kept
        with this tensor's: every call for these sites and that grid shares them (a network that pads its input grid
        builds its maps once per input, not once per forward). ``indice_key`` names start afresh on the new grid.
        """
        spatial_shape = [as_integer(size, f'spatial_shape[{axis}]') for axis, size in enumerate(spatial_shape)]
        if len(spatial_shape) != self.ndim or any(new < old for new, old in zip(spatial_shape, self.spatial_shape)):
            raise ValueError(f'on_grid needs a {self.ndim}-D grid at least as large as {self.spatial_shape} on every '
                             f'axis, got {spatial_shape}')
        if spatial_shape == self.spatial_shape:
            return self
        maps = self.kernel_maps.setdefault(('grid', *spatial_shape), KernelMapCache(self.kernel_maps.sites_distinct))
        return self._derived(self.features, self.indices, spatial_shape, self.batch_size, {}, maps)

    def shadow_copy(self) -> 'SparseTensor':
        return self.replace_feature(self.features)

    def find_indice_pair(self, key):
        """The kernel map registered under ``indice_key=key``, or None."""
        return self.indice_dict.get(key)

    def check_distinct_sites(self) -> None:
        """Refuse two rows naming the same site; sorts the sites at most once per coordinate set.

        Raises:
            ValueError: naming two rows with the same batch index and coordinates.
        """
        if self.kernel_maps.sites_distinct or torch.compiler.is_compiling():
            return
        sorted_distinct_keys(self.indices, self.spatial_shape)
        self.kernel_maps.sites_distinct = True

    def dense(self, channels_first: bool = True) -> torch.Tensor:
        """``[B, C, *spatial_shape]`` (or ``[B, *spatial_shape, C]``) with zeros at empty sites.

        Raises:
            ValueError: when two rows name the same site (see :meth:`check_distinct_sites`).
        """
        self.check_distinct_sites()
        out = self.features.new_zeros(self.batch_size, *self.spatial_shape, self.features.shape[1])
        out[tuple(self.indices.long().unbind(dim=1))] = self.features
        return out.movedim(-1, 1).contiguous() if channels_first else out

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> 'SparseTensor':
        """From a channels-last dense ``[B, *spatial, C]`` tensor: sites where any channel is non-zero."""
        if x.dim() < 3:
            raise ValueError(f'from_dense expects [batch, *spatial, channels], got shape {tuple(x.shape)}')
        occupied = (x != 0).any(dim=-1)
        indices = occupied.nonzero().to(torch.int32)
        return cls._derived(x[occupied], indices, list(x.shape[1:-1]), x.shape[0], {},
                            KernelMapCache(sites_distinct=True))

    def to_spconv(self):
        """This tensor as a ``spconv.pytorch.SparseConvTensor`` (needs spconv)."""
        from .interop import to_spconv

        return to_spconv(self)

    def __repr__(self):
        return (f'SparseTensor(sites={self.indices.shape[0]}, channels={self.features.shape[1]}, '
                f'spatial_shape={self.spatial_shape}, batch_size={self.batch_size}, dtype={self.features.dtype})')


SparseConvTensor = SparseTensor
