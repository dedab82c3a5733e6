"""NATTEN's neighbourhood-attention modules: same names, arguments and parameter names (``qkv``, ``rpb``, ``proj``),
so NAT/DiNAT code and state_dicts written for ``natten.NeighborhoodAttention2D`` run on sparsevision's kernel."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.neighborhood import neighborhood_attention


class _NeighborhoodAttention(nn.Module):
    """Multi-head neighbourhood attention over ``[B, *grid, C]`` channels-last inputs (``dims`` grid axes).

    Args:
        dim: channels ``C``.
        num_heads: heads (``C`` must divide evenly).
        kernel_size, dilation, is_causal: an int (bool) or one per axis, as in :func:`~sparsevision.ops.na2d`.
        rel_pos_bias: learn a relative positional bias ``rpb [heads, 2k-1, ...]`` (NAT/DiNAT; not with causal axes).
        qkv_bias: bias of the ``qkv`` projection.
        qk_scale: score factor (default ``head_dim ** -0.5``).
        attn_drop: must be 0: the kernel never forms the attention weights that dropout would act on.
        proj_drop: dropout after the output projection.

    A grid smaller than ``kernel_size * dilation`` on some axis is zero-padded up to it before the projections and
    cropped after, as NATTEN's modules do.
    """

    dims = 0

    def __init__(self, dim: int, num_heads: int, kernel_size, dilation=1, is_causal=False, rel_pos_bias: bool = False,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if attn_drop:
            raise ValueError('attn_drop must be 0: neighbourhood attention never forms the attention weights it would '
                             'drop; use proj_drop')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size = self._per_axis(kernel_size)
        self.dilation = self._per_axis(dilation)
        self.is_causal = self._per_axis(is_causal)
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            if any(self.is_causal):
                raise ValueError('rel_pos_bias with causal axes is not defined (NATTEN refuses it too)')
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter('rpb', None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _per_axis(self, value) -> tuple:
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * self.dims
        if len(values) != self.dims:
            raise ValueError(f'{type(self).__name__} needs {self.dims} values per argument, got {value}')
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[-1] != self.num_heads * self.head_dim:
            raise ValueError(f'{type(self).__name__} takes [batch, *{self.dims} grid axes, '
                             f'{self.num_heads * self.head_dim} channels], got shape {tuple(x.shape)}')
        grid = x.shape[1:-1]
        padded = [max(size, k * d) for size, k, d in zip(grid, self.kernel_size, self.dilation)]
        if list(padded) != list(grid):
            padding = [0, 0]
            for size, target in reversed(list(zip(grid, padded))):
                padding += [0, target - size]
            x = F.pad(x, padding)
        qkv = self.qkv(x).reshape(*x.shape[:-1], 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(dim=-3)
        out = neighborhood_attention(query, key, value, self.kernel_size, self.dilation, self.is_causal, self.rpb,
                                     self.scale, dims=self.dims)
        out = out[(slice(None), *(slice(0, size) for size in grid))].reshape(*x.shape[:1], *grid, x.shape[-1])
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f'head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, is_causal={self.is_causal}, has_bias={self.rpb is not None}')


class NeighborhoodAttention1D(_NeighborhoodAttention):
    dims = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    dims = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    dims = 3


__all__ = ['NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D']
