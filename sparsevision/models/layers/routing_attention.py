"""BiFormer's bi-level routing attention, with the official module's arguments and parameter names.

The map is tiled into ``n_win x n_win`` regions. Region-averaged queries and keys (detached) score region pairs; each
region keeps its ``topk`` best regions; every pixel then attends to all pixels of its region's routed regions. The
official code gathers those keys and values into ``topk`` copies per region; here the routed regions become each
query's key list for :func:`~sparsevision.ops.indexed_attention`, which reads them in place (no copies, and a
deterministic backward instead of ``gather``'s scatter-add). A depthwise convolution of the values (LCE, ``lepe``)
is added, then the output projection ``wo``.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import indexed_attention
from ...ops.map_validation import mark_valid


class QKVLinear(nn.Module):
    """One projection to queries and keys (``qk_dim`` each) and values (``dim``): the official ``qkv.qkv``."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True):
        super().__init__()
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(q, kv)``: ``[..., qk_dim]`` and ``[..., qk_dim + dim]``."""
        return self.qkv(x).split([self.qk_dim, self.qk_dim + x.shape[-1]], dim=-1)


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on channels-last maps ``[B, H, W, C]``.

    Args:
        dim: channels.
        num_heads: heads (``dim`` and ``qk_dim`` must divide evenly).
        n_win: regions per side; ``H`` and ``W`` must be multiples of it (or ``auto_pad``).
        qk_dim: query/key width (default ``dim``).
        qk_scale: score factor (default ``qk_dim ** -0.5``, also the router's).
        topk: regions each region attends to.
        side_dwconv: kernel of the depthwise LCE convolution on the values (0: none).
        auto_pad: zero-pad ``H`` and ``W`` up to multiples of ``n_win`` (and crop the output).
        kv_per_win, kv_downsample_ratio, kv_downsample_kernel, kv_downsample_mode, param_attention, param_routing,
            diff_routing, soft_routing: the official module's other arguments; only their defaults (``'identity'``
            key/value downsampling, ``'qkvo'``, no routing parameters, detached hard routing) are supported.

    Raises:
        ValueError: an unsupported option, indivisible widths, ``topk`` above the number of regions, or a map not
            divisible into ``n_win`` regions without ``auto_pad``.
    """

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: Optional[int] = None,
                 qk_scale: Optional[float] = None, kv_per_win: int = 4, kv_downsample_ratio: int = 4,
                 kv_downsample_kernel=None, kv_downsample_mode: str = 'identity', topk: int = 4,
                 param_attention: str = 'qkvo', param_routing: bool = False, diff_routing: bool = False,
                 soft_routing: bool = False, side_dwconv: int = 3, auto_pad: bool = False):
        super().__init__()
        unsupported = {name: value for name, value, default in [
            ('kv_downsample_mode', kv_downsample_mode, 'identity'), ('param_attention', param_attention, 'qkvo'),
            ('param_routing', param_routing, False), ('diff_routing', diff_routing, False),
            ('soft_routing', soft_routing, False)] if value != default}
        if unsupported:
            raise ValueError(f'BiLevelRoutingAttention supports the official defaults only; got {unsupported}')
        self.dim, self.num_heads, self.n_win, self.topk, self.auto_pad = dim, num_heads, n_win, topk, auto_pad
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'dim {dim} and qk_dim {self.qk_dim} must be divisible by num_heads {num_heads}')
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f'topk must be in [1, n_win^2 = {n_win * n_win}], got {topk}')
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.qkv = QKVLinear(dim, self.qk_dim)
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0
                     else None)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'BiLevelRoutingAttention takes [batch, H, W, {self.dim}], got {tuple(x.shape)}')
        height, width = x.shape[1:3]
        padded = [-(-size // self.n_win) * self.n_win for size in (height, width)]
        if padded != [height, width]:
            if not self.auto_pad:
                raise ValueError(f'H and W ({height}, {width}) must be multiples of n_win={self.n_win}; pass '
                                 'auto_pad=True to pad them')
            x = F.pad(x, (0, 0, 0, padded[1] - width, 0, padded[0] - height))
        out = self._attend(x)
        return out[:, :height, :width].contiguous()

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        q, kv = self.qkv(x)
        k, v = kv.split([self.qk_dim, self.dim], dim=-1)
        routes = self.route(q, k)
        index = routed_region_index(routes, height, width, self.n_win)
        rows, heads = batch * height * width, self.num_heads
        qk_per_head, v_per_head = self.qk_dim // heads, self.dim // heads
        out = indexed_attention(q.reshape(rows, heads, qk_per_head), k.reshape(rows, heads, qk_per_head),
                                v.reshape(rows, heads, v_per_head), index, scale=self.scale)
        out = out.reshape(batch, height, width, self.dim)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.wo(out)

    def route(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[B, n_win^2, topk]``: the regions each region attends to, best first (region-mean q and k, detached)."""
        batch, height, width, channels = q.shape
        shape = (batch, self.n_win, height // self.n_win, self.n_win, width // self.n_win, channels)
        q_regions = q.detach().reshape(shape).mean(dim=(2, 4)).reshape(batch, self.n_win ** 2, channels)
        k_regions = k.detach().reshape(shape).mean(dim=(2, 4)).reshape(batch, self.n_win ** 2, channels)
        logits = (q_regions * self.scale) @ k_regions.transpose(-2, -1)
        return logits.topk(self.topk, dim=-1).indices

    def extra_repr(self) -> str:
        return f'{self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}'


def routed_region_index(routes: torch.Tensor, height: int, width: int, n_win: int) -> torch.Tensor:
    """``[B * H * W, topk * region pixels]`` int32 key rows: for every pixel, the pixels of its region's routed
    regions (``routes [B, n_win^2, topk]``), region by region in route order, row-major inside a region."""
    batch, regions, topk = routes.shape
    region_h, region_w = height // n_win, width // n_win
    region_pixels = _region_pixels(height, width, n_win, routes.device)           # [regions, region pixels]
    slots = topk * region_h * region_w
    keys = region_pixels[routes].reshape(batch, regions, slots)
    keys = keys + (torch.arange(batch, device=routes.device) * height * width)[:, None, None]
    pixel_region = (torch.arange(height, device=routes.device)[:, None] // region_h * n_win
                    + torch.arange(width, device=routes.device)[None, :] // region_w).reshape(-1)
    index = keys[:, pixel_region].reshape(batch * height * width, slots).to(torch.int32)
    mark_valid(index, batch * height * width)   # rows in range by construction: no check (and no GPU sync) needed
    return index


def _region_pixels(height: int, width: int, n_win: int, device) -> torch.Tensor:
    region_h, region_w = height // n_win, width // n_win
    pixels = torch.arange(height * width, device=device).reshape(n_win, region_h, n_win, region_w)
    return pixels.permute(0, 2, 1, 3).reshape(n_win * n_win, region_h * region_w)


def gathered_routing_attention(layer: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """The official formulation of ``layer(x)``, written from the paper: per region, the routed regions' keys and
    values gathered into copies (``topk`` per region), then dense attention. For tests and benchmarks: the peer."""
    batch, height, width, dim = x.shape
    n, heads = layer.n_win, layer.num_heads
    rh, rw = height // n, width // n
    q, kv = layer.qkv(x)
    k, v = kv.split([layer.qk_dim, dim], dim=-1)

    def by_region(t):   # [B, H, W, C] -> [B, regions, region pixels, C]
        return t.reshape(batch, n, rh, n, rw, -1).permute(0, 1, 3, 2, 4, 5).reshape(batch, n * n, rh * rw, -1)

    q_r, k_r, v_r = by_region(q), by_region(k), by_region(v)
    logits = (q_r.detach().mean(2) * layer.scale) @ k_r.detach().mean(2).transpose(-2, -1)
    routes = logits.topk(layer.topk, dim=-1).indices                                     # [B, regions, topk]
    gathered_k = torch.stack([k_r[b][routes[b]] for b in range(batch)])                 # [B, regions, topk, px, C]
    gathered_v = torch.stack([v_r[b][routes[b]] for b in range(batch)])

    def heads_of(t):   # [..., C] -> [..., heads, C / heads] -> heads before the pixels
        return t.reshape(*t.shape[:-1], heads, -1).transpose(-2, -3)

    keys = heads_of(gathered_k.flatten(2, 3))
    values = heads_of(gathered_v.flatten(2, 3))
    weights = ((heads_of(q_r) * layer.scale) @ keys.transpose(-2, -1)).softmax(-1)
    out = (weights @ values).transpose(-2, -3).flatten(-2)                              # [B, regions, px, C]
    out = out.reshape(batch, n, n, rh, rw, dim).permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, dim)
    if layer.lepe is not None:
        out = out + layer.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return layer.wo(out)
