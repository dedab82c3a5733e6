"""NAT and DiNAT (Hassani et al., CVPR 2023, arXiv 2204.07143 and 2209.15001) on sparsevision's neighbourhood
attention, with the official classification models' module names, so their ImageNet checkpoints load unchanged
(``model.load_state_dict(torch.load(path, weights_only=True))``) and run on CPU, relative positional bias included.

A convolutional tokenizer (two 3x3 stride-2 convolutions), four levels of pre-norm NA blocks (attention and MLP,
optional layer scale), a 3x3 stride-2 convolution between levels, a final norm, average pooling and a linear head.
DiNAT is NAT with per-block dilations.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from timm.layers import DropPath, Mlp

from ...registry import MODELS
from ..layers import NeighborhoodAttention2D

_DINAT_DILATIONS = {6: [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5],
                    18: [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]}
FIELDS = ('embed_dim', 'depths', 'num_heads', 'mlp_ratio', 'drop_path_rate', 'layer_scale', 'dilations')
ARCHITECTURES = {   # name: the FIELDS, in order
    'nat_mini': (64, (3, 4, 6, 5), (2, 4, 8, 16), 3.0, 0.2, None, None),
    'nat_tiny': (64, (3, 4, 18, 5), (2, 4, 8, 16), 3.0, 0.2, None, None),
    'nat_small': (96, (3, 4, 18, 5), (3, 6, 12, 24), 2.0, 0.3, 1e-5, None),
    'nat_base': (128, (3, 4, 18, 5), (4, 8, 16, 32), 2.0, 0.5, 1e-5, None),
    'dinat_mini': (64, (3, 4, 6, 5), (2, 4, 8, 16), 3.0, 0.2, None, _DINAT_DILATIONS[6]),
    'dinat_tiny': (64, (3, 4, 18, 5), (2, 4, 8, 16), 3.0, 0.2, None, _DINAT_DILATIONS[18]),
    'dinat_small': (96, (3, 4, 18, 5), (3, 6, 12, 24), 2.0, 0.3, None, _DINAT_DILATIONS[18]),
    'dinat_base': (128, (3, 4, 18, 5), (4, 8, 16, 32), 2.0, 0.5, None, _DINAT_DILATIONS[18]),
}


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convolutions to ``embed_dim`` channels, then a LayerNorm; output channels-last."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, embed_dim // 2, 3, 2, 1),
                                  nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """A 3x3 stride-2 convolution doubling the channels (no bias), then a LayerNorm; channels-last in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATLayer(nn.Module):
    """Pre-norm block: ``x + NA(norm1(x))``, then ``x + MLP(norm2(x))``, each branch scaled by ``gamma`` if
    ``layer_scale``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int, mlp_ratio: float, drop_path: float,
                 layer_scale: Optional[float], qkv_bias: bool = True, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation, rel_pos_bias=True,
                                            qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.norm1(x))
        x = x + self.drop_path(self.gamma1 * attended if self.layer_scale else attended)
        transformed = self.mlp(self.norm2(x))
        return x + self.drop_path(self.gamma2 * transformed if self.layer_scale else transformed)


class NATBlock(nn.Module):
    """One level: ``depth`` NAT layers, then (except in the last level) a downsampler."""

    def __init__(self, dim: int, depth: int, num_heads: int, kernel_size: int, dilations: Sequence[int],
                 mlp_ratio: float, drop_path: Sequence[float], layer_scale: Optional[float], downsample: bool,
                 qkv_bias: bool = True, drop: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(NATLayer(dim, num_heads, kernel_size, dilations[i], mlp_ratio, drop_path[i],
                                             layer_scale, qkv_bias, drop) for i in range(depth))
        self.downsample = ConvDownsampler(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(level output before downsampling, input of the next level)``."""
        for block in self.blocks:
            x = block(x)
        return x, (x if self.downsample is None else self.downsample(x))


@MODELS.register_module()
class NAT(BaseModule):
    """Neighborhood Attention Transformer; DiNAT for an ``arch`` named ``dinat_*`` (NAT with dilations).

    Args:
        arch: one of :data:`ARCHITECTURES` (``nat_mini`` ... ``nat_base``, ``dinat_mini`` ... ``dinat_base``), or a
            dict of the :data:`FIELDS` for another size (``layer_scale`` and ``dilations`` may be None: no layer
            scale, no dilation).
        in_chans: image channels.
        num_classes: classes of the linear head; 0 returns the pooled features.
        kernel_size: neighbourhood size (7 in all released models).
        drop_rate, drop_path_rate: dropout after projections and stochastic depth (``None``: the architecture's).
        out_indices: return the outputs of these levels (channels-first ``[B, C, H, W]``, before downsampling) as a
            tuple, for dense prediction, instead of the classification output.
        init_cfg: mmengine initialisation config.

    Raises:
        ValueError: an unknown ``arch``, an arch dict with missing or unknown fields, or a level number outside the
            levels.
    """

    def __init__(self, arch: str = 'nat_mini', in_chans: int = 3, num_classes: int = 1000, kernel_size: int = 7,
                 drop_rate: float = 0.0, drop_path_rate: Optional[float] = None,
                 out_indices: Optional[Sequence[int]] = None, init_cfg=None):
        super().__init__(init_cfg)
        embed_dim, depths, num_heads, mlp_ratio, default_drop_path, layer_scale, dilations = _architecture(arch)
        if out_indices is not None and any(not 0 <= i < len(depths) for i in out_indices):
            raise ValueError(f'out_indices must be level numbers in [0, {len(depths)}), got {out_indices}')
        self.out_indices = None if out_indices is None else tuple(out_indices)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        top_rate = default_drop_path if drop_path_rate is None else drop_path_rate
        rates = torch.linspace(0, top_rate, sum(depths)).tolist()
        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        self.levels = nn.ModuleList()
        for level, depth in enumerate(depths):
            first = sum(depths[:level])
            self.levels.append(NATBlock(embed_dim * 2 ** level, depth, num_heads[level], kernel_size,
                                        dilations[level] if dilations else [1] * depth, mlp_ratio,
                                        rates[first:first + depth], layer_scale, level < len(depths) - 1,
                                        drop=drop_rate))
        self.norm = nn.LayerNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, num_features]``: the normalised, average-pooled last level."""
        x = self.pos_drop(self.patch_embed(x))
        for level in self.levels:
            _, x = level(x)
        return self.avgpool(self.norm(x).flatten(1, 2).transpose(1, 2)).flatten(1)

    def forward(self, x: torch.Tensor):
        if self.out_indices is None:
            return self.head(self.forward_features(x))
        x, outputs = self.pos_drop(self.patch_embed(x)), []
        for index, level in enumerate(self.levels):
            level_output, x = level(x)
            if index in self.out_indices:
                outputs.append(level_output.permute(0, 3, 1, 2).contiguous())
        return tuple(outputs)


def _architecture(arch) -> tuple:
    """The FIELDS of ``arch``, a name of :data:`ARCHITECTURES` or a dict of them."""
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f'unknown NAT arch {arch!r}; choose one of {sorted(ARCHITECTURES)} or pass a dict')
        return ARCHITECTURES[arch]
    if not isinstance(arch, dict) or set(arch) != set(FIELDS):
        raise ValueError(f'a NAT arch dict needs exactly the fields {FIELDS}, got {arch!r}')
    return tuple(arch[field] for field in FIELDS)


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
