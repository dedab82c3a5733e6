"""Sparse pooling: local max/average over kernel windows, and global pooling per sample."""
from typing import Optional

import torch

from ..ops.coordinates import IntOrSequence, convolution_geometry
from ..ops.map_validation import require_valid
from .kernel_maps import convolution_map
from .modules import SparseModule
from .tensor import SparseTensor


class SparsePool(SparseModule):
    """Max or average over the input sites each output window covers (empty taps ignored).

    Args:
        ndim: spatial axes.
        kernel_size, stride, padding, dilation: an int or one per axis; ``stride`` defaults to ``kernel_size``.
        mode: ``'max'`` or ``'avg'``.
        subm: keep the input sites (centred odd window) instead of downsampling.
        indice_key: share the kernel map under this name (spconv's meaning).
    """

    def __init__(self, ndim: int, kernel_size: IntOrSequence, stride: Optional[IntOrSequence] = None,
                 padding: IntOrSequence = 0, dilation: IntOrSequence = 1, mode: str = 'max', subm: bool = False,
                 indice_key: Optional[str] = None, **spconv_options):
        super().__init__()
        if mode not in ('max', 'avg'):
            raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
        self.ndim, self.mode, self.subm, self.indice_key = ndim, mode, subm, indice_key
        self.kernel_size, self.stride, self.padding, self.dilation = convolution_geometry(
            ndim, kernel_size, kernel_size if stride is None else stride, padding, dilation)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.ndim != self.ndim:
            raise ValueError(f'{type(self).__name__} is {self.ndim}-D but the input has {x.ndim} spatial axes')
        kernel_map = convolution_map(x, self.kernel_size, self.stride, self.padding, self.dilation, self.subm,
                                     self.indice_key)
        features = pool_features(x.features, kernel_map.neighbors, self.mode)
        return SparseTensor._derived(features, kernel_map.out_indices, kernel_map.out_spatial_shape, x.batch_size,
                                     x.indice_dict, kernel_map.out_maps)


def pool_features(features: torch.Tensor, neighbors: torch.Tensor, mode: str) -> torch.Tensor:
    """Max or mean over each row's present taps (taps visited in order, so results are deterministic).

    No shape depends on the data (no host sync on CUDA): ``features`` gets one fill row (``-inf`` for max, 0 for
    avg) that absent taps (``-1``) read, which changes no maximum or sum; one ``[M, C]`` gather per tap (indexing,
    whose gradient is deterministic on CUDA too, unlike ``index_select``'s).

    Raises:
        ValueError: map entries other than -1 or rows of ``features`` (checked once per map, see
            :mod:`sparsevision.ops.map_validation`).
    """
    require_valid(neighbors, features.shape[0], 'sparse pooling')
    outputs, taps = neighbors.shape
    fill = float('-inf') if mode == 'max' else 0.0
    padded = torch.cat([features, features.new_full((1, features.shape[1]), fill)])
    sources = torch.where(neighbors >= 0, neighbors, features.shape[0]).long()
    pooled = features.new_full((outputs, features.shape[1]), fill)
    for tap in range(taps):
        gathered = padded[sources[:, tap]]
        pooled = torch.maximum(pooled, gathered) if mode == 'max' else pooled + gathered
    if mode == 'avg':
        pooled = pooled / (neighbors >= 0).sum(dim=1, keepdim=True).clamp(min=1).to(pooled.dtype)
    return pooled


def _make_pools(ndim: int):
    class SparseMaxPool(SparsePool):
        def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None, subm=False,
                     **spconv_options):
            super().__init__(ndim, kernel_size, stride, padding, dilation, 'max', subm, indice_key)

    class SparseAvgPool(SparsePool):
        def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None, subm=False,
                     **spconv_options):
            super().__init__(ndim, kernel_size, stride, padding, dilation, 'avg', subm, indice_key)

    for cls, name in ((SparseMaxPool, f'SparseMaxPool{ndim}d'), (SparseAvgPool, f'SparseAvgPool{ndim}d')):
        cls.__name__ = cls.__qualname__ = name
        cls.__doc__ = f'{ndim}-D :class:`SparsePool` ({name.removesuffix(f"{ndim}d")}, spconv arguments).'
    return SparseMaxPool, SparseAvgPool


SparseMaxPool1d, SparseAvgPool1d = _make_pools(1)
SparseMaxPool2d, SparseAvgPool2d = _make_pools(2)
SparseMaxPool3d, SparseAvgPool3d = _make_pools(3)
SparseMaxPool4d, SparseAvgPool4d = _make_pools(4)


class SparseGlobalPool(SparseModule):
    """Pool every sample's sites to one vector: ``[batch_size, C]`` (zeros for samples without sites).

    Raises:
        ValueError: (in forward) when two rows name the same site (see :meth:`SparseTensor.check_distinct_sites`).
    """

    def __init__(self, mode: str = 'max'):
        super().__init__()
        if mode not in ('max', 'avg'):
            raise ValueError(f"global pooling mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode

    def forward(self, x: SparseTensor) -> torch.Tensor:
        x.check_distinct_sites()   # a site counted twice would skew the mean
        batch = x.indices[:, 0].long()
        rows = []
        for sample in range(x.batch_size):
            members = x.features[batch == sample]
            if members.shape[0] == 0:
                rows.append(x.features.new_zeros(x.features.shape[1]))
            else:
                rows.append(members.amax(dim=0) if self.mode == 'max' else members.mean(dim=0))
        return torch.stack(rows) if rows else x.features.new_zeros(0, x.features.shape[1])


class SparseGlobalMaxPool(SparseGlobalPool):
    def __init__(self):
        super().__init__('max')


class SparseGlobalAvgPool(SparseGlobalPool):
    def __init__(self):
        super().__init__('avg')
