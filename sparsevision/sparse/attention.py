"""Attention over sparse voxels: each active site attends to the sites a submanifold convolution would read."""
import math
from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from ..ops.coordinates import IntOrSequence, convolution_geometry
from .kernel_maps import convolution_map
from .modules import SparseModule
from .tensor import SparseTensor


class SubMAttention(SparseModule):
    """Multi-head attention of every site over its submanifold neighbourhood, with a bias per (head, kernel offset).

    The neighbourhood is the kernel map of a ``SubMConv`` with the same ``kernel_size`` and ``dilation`` (shared with
    such layers through the tensor's map cache, or ``indice_key``); the keys are read through it by
    :func:`~sparsevision.ops.indexed_attention`, never gathered. Sites keep their coordinates.

    Args:
        ndim: spatial axes (1 to 4).
        channels: feature width (in and out).
        num_heads: heads; ``channels`` must divide evenly.
        kernel_size, dilation: the neighbourhood, an odd int or one per axis.
        qkv_bias: bias of the query/key/value projection.
        rel_pos_bias: learn a bias ``rpb [heads, kernel volume]`` added to each score by the key's kernel offset.
        indice_key: name under which the kernel map is shared (spconv's meaning).
    """

    def __init__(self, ndim: int, channels: int, num_heads: int, kernel_size: IntOrSequence = 3,
                 dilation: IntOrSequence = 1, qkv_bias: bool = True, rel_pos_bias: bool = True,
                 indice_key: Optional[str] = None):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'channels {channels} is not divisible by num_heads {num_heads}')
        self.ndim, self.channels, self.num_heads, self.indice_key = ndim, channels, num_heads, indice_key
        self.kernel_size, _, _, self.dilation = convolution_geometry(ndim, kernel_size, 1, 0, dilation)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f'a submanifold neighbourhood needs odd kernel sizes, got {self.kernel_size}')
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, math.prod(self.kernel_size))) if rel_pos_bias else None
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not isinstance(x, SparseTensor) or x.ndim != self.ndim:
            raise ValueError(f'{type(self).__name__} takes a {self.ndim}-D SparseTensor, got '
                             f'{getattr(x, "ndim", type(x).__name__)}')
        if x.features.shape[1] != self.channels:
            raise ValueError(f'{type(self).__name__} expects {self.channels} channels, got {x.features.shape[1]}')
        padding = tuple(k // 2 * d for k, d in zip(self.kernel_size, self.dilation))
        kernel_map = convolution_map(x, self.kernel_size, (1,) * self.ndim, padding, self.dilation, True,
                                     self.indice_key)
        sites = x.features.shape[0]
        head_dim = self.channels // self.num_heads
        query, key, value = self.qkv(x.features).reshape(sites, 3, self.num_heads, head_dim).unbind(dim=1)
        bias = None if self.rpb is None else self.rpb.to(query.dtype)[None]
        out = ops.indexed_attention(query, key, value, kernel_map.neighbors, bias)
        return x.replace_feature(self.proj(out.reshape(sites, self.channels)))

    def extra_repr(self) -> str:
        return (f'{self.channels}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, rel_pos_bias={self.rpb is not None}')


class SubMAttention3d(SubMAttention):
    """:class:`SubMAttention` on 3-D sites (``SubMAttention3d(channels, num_heads, kernel_size=3, ...)``)."""

    def __init__(self, channels: int, num_heads: int, kernel_size: IntOrSequence = 3, dilation: IntOrSequence = 1,
                 qkv_bias: bool = True, rel_pos_bias: bool = True, indice_key: Optional[str] = None):
        super().__init__(3, channels, num_heads, kernel_size, dilation, qkv_bias, rel_pos_bias, indice_key)
