"""Sparse convolution layers with spconv's names, arguments and weight layout ``[out, *kernel, in / groups]``."""
import math
from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from ..ops.coordinates import IntOrSequence, convolution_geometry
from .kernel_maps import convolution_map, inverse_convolution_map
from .modules import SparseModule
from .tensor import KernelMap, SparseTensor


class SparseConvolution(SparseModule):
    """Convolution over the occupied sites of a :class:`SparseTensor`.

    Submanifold (``subm=True``): outputs on the input sites, centred odd kernel.
    Regular: outputs wherever the kernel reaches an input (``stride``,
    ``padding``, ``dilation`` as in a dense convolution). Inverse: undoes the
    strided convolution registered under the same ``indice_key``, back onto its
    input sites. Deterministic at any thread count; ``groups`` includes
    depthwise (``groups = in_channels``).

    A single-tap convolution that keeps the grid (kernel volume 1, and
    submanifold or all strides 1) with ``groups=1`` reads its weight memory
    ``[out, 1, ..., 1, in]`` as an ``[in, out]`` matrix, exactly as spconv 2.x
    does on its ``conv1x1`` path, so spconv-trained checkpoints (Pointcept's
    ``proj`` shortcuts, for example) compute the same function here.

    Args:
        ndim: spatial axes (1 to 4).
        in_channels, out_channels: feature widths.
        kernel_size, stride, padding, dilation: an int or one per axis.
        groups: channel groups.
        bias: add a learnable bias.
        subm: submanifold convolution.
        inverse: inverse convolution (needs ``indice_key``).
        indice_key: name under which the kernel map is shared (spconv's meaning).
        **spconv_options: spconv-only arguments (``algo``, ``fp32_accum``, ...), accepted and ignored.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: IntOrSequence = 3,
                 stride: IntOrSequence = 1, padding: IntOrSequence = 0, dilation: IntOrSequence = 1, groups: int = 1,
                 bias: bool = True, subm: bool = False, inverse: bool = False, indice_key: Optional[str] = None,
                 **spconv_options):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f'in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by '
                             f'groups ({groups})')
        if inverse and indice_key is None:
            raise ValueError('an inverse convolution needs the indice_key of the strided convolution it undoes')
        self.ndim, self.in_channels, self.out_channels, self.groups = ndim, in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = convolution_geometry(
            ndim, kernel_size, stride, padding, dilation)
        self.subm, self.inverse, self.indice_key = subm, inverse, indice_key
        if subm and any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f'submanifold convolution needs odd kernel sizes, got {self.kernel_size}')
        self.reads_weight_as_matrix = (math.prod(self.kernel_size) == 1 and groups == 1
                                       and (subm or all(step == 1 for step in self.stride)))
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels // groups))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ``±1/sqrt(fan_in)``, like ``nn.ConvNd``'s default."""
        bound = 1 / math.sqrt(self.in_channels // self.groups * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not isinstance(x, SparseTensor):
            raise ValueError(f'{type(self).__name__} takes a SparseTensor, got {type(x).__name__}')
        if x.ndim != self.ndim:
            raise ValueError(f'{type(self).__name__} is {self.ndim}-D but the input has {x.ndim} spatial axes')
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects {self.in_channels} input channels, '
                             f'got {x.features.shape[1]}')
        if self.inverse:
            kernel_map = inverse_convolution_map(x, self.indice_key, self.kernel_size)
        else:
            kernel_map = convolution_map(x, self.kernel_size, self.stride, self.padding, self.dilation, self.subm,
                                         self.indice_key)
        if self.reads_weight_as_matrix:   # spconv's conv1x1 reading of the same memory
            weight = self.weight.reshape(1, self.in_channels, self.out_channels).to(x.features.dtype)
        else:
            taps = math.prod(self.kernel_size)
            weight = self.weight.reshape(self.out_channels, taps, -1).permute(1, 2, 0).to(x.features.dtype)
        features = self.convolve(x.features, weight, kernel_map)   # a view: the kernel packs it in one pass
        if self.bias is not None:
            features = features + self.bias.to(features.dtype)
        return SparseTensor._derived(features, kernel_map.out_indices, kernel_map.out_spatial_shape, x.batch_size,
                                     x.indice_dict, kernel_map.out_maps)

    def convolve(self, features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
        """``[M, out]`` features from ``[N, in]`` through the map, weight ``[taps, in / groups, out]``."""
        return ops.sparse_conv(features, weight, kernel_map.neighbors, kernel_map.inverse, self.groups)

    def extra_repr(self) -> str:
        kind = 'subm' if self.subm else 'inverse' if self.inverse else f'stride={self.stride}, padding={self.padding}'
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {kind}, '
                f'dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, '
                f'indice_key={self.indice_key!r}')


def _make_layers(ndim: int):
    class SubMConv(SparseConvolution):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, indice_key=None, **spconv_options):
            super().__init__(ndim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                             subm=True, indice_key=indice_key)

    class SparseConv(SparseConvolution):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, indice_key=None, **spconv_options):
            super().__init__(ndim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                             indice_key=indice_key)

    class SparseInverseConv(SparseConvolution):
        def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, **spconv_options):
            super().__init__(ndim, in_channels, out_channels, kernel_size, bias=bias, inverse=True,
                             indice_key=indice_key)

    for cls, name in ((SubMConv, f'SubMConv{ndim}d'), (SparseConv, f'SparseConv{ndim}d'),
                      (SparseInverseConv, f'SparseInverseConv{ndim}d')):
        cls.__name__ = cls.__qualname__ = name
        cls.__doc__ = f'{ndim}-D :class:`SparseConvolution` ({name.removesuffix(f"{ndim}d")}, spconv arguments).'
    return SubMConv, SparseConv, SparseInverseConv


SubMConv1d, SparseConv1d, SparseInverseConv1d = _make_layers(1)
SubMConv2d, SparseConv2d, SparseInverseConv2d = _make_layers(2)
SubMConv3d, SparseConv3d, SparseInverseConv3d = _make_layers(3)
SubMConv4d, SparseConv4d, SparseInverseConv4d = _make_layers(4)
