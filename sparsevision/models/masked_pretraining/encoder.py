"""Running an unmodified CNN backbone on the visible patches of masked images."""
from typing import List

import torch
import torch.nn as nn

from .feature_maps import MaskedFeatureMap
from .masked_dense_map import MaskedDenseMap
from .masking import MaskPyramid
from .sparse_site_map import SparseSiteMap


def _known_layer_types() -> tuple:
    from timm.layers import DropPath, LayerNorm, LayerNorm2d
    from timm.layers import activations as timm_activations
    from timm.layers.grn import GlobalResponseNorm

    return (nn.Conv2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm, LayerNorm, LayerNorm2d, nn.Linear, nn.ReLU,
            nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.Identity, nn.Dropout,
            nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Hardsigmoid, DropPath, GlobalResponseNorm,
            timm_activations.GELU, timm_activations.Sigmoid, timm_activations.Tanh, timm_activations.HardSigmoid)


def check_maskable(backbone: nn.Module) -> None:
    """Raise a ValueError naming the first layer that has no masked version.

    Every leaf layer must be one of the known types exactly (a subclass may
    change ``forward``); containers are fine, their glue code (sums, permutes,
    per-channel scales) is checked as it runs.
    """
    known = _known_layer_types()
    for name, module in backbone.named_modules():
        if next(module.children(), None) is None and type(module) not in known:
            raise ValueError(f'layer {name!r} ({type(module).__module__}.{type(module).__name__}) has no masked '
                             f'version, so the backbone cannot be run sparsely; known layers: '
                             f'{", ".join(sorted(f"{t.__module__}.{t.__name__}" for t in known))}')
        if isinstance(module, nn.Conv2d) and module.padding_mode != 'zeros':
            raise ValueError(f'layer {name!r} pads with {module.padding_mode!r}; masked convolution pads with zeros')


def encode_masked(backbone: nn.Module, images: torch.Tensor, visible_patches: torch.Tensor,
                  sparse: bool = True) -> List[MaskedFeatureMap]:
    """Run ``backbone`` on the visible patches of ``images``; its outputs as masked feature maps.

    Args:
        backbone: a CNN that returns one feature map or a list/tuple of them
            (checked with :func:`check_maskable` by the caller).
        images: ``[B, C, H, W]``.
        visible_patches: ``[B, gh, gw]`` bool (``True`` = visible); ``H`` and
            ``W`` must be multiples of the grid.
        sparse: compute at the visible sites only (``True``) or densely with
            re-masking (the emulation; same numbers).
    """
    if visible_patches.shape[0] != images.shape[0]:
        raise ValueError(f'the mask has {visible_patches.shape[0]} samples but the batch has {images.shape[0]}')
    pyramid = MaskPyramid(visible_patches.to(images.device))
    representation = SparseSiteMap if sparse else MaskedDenseMap
    outputs = backbone(representation.from_dense(images, pyramid))
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    for output in outputs:
        if not isinstance(output, MaskedFeatureMap):
            raise TypeError(f'the backbone returned a {type(output).__name__}, not a feature map: masked encoders '
                            'must return their (multi-scale) feature maps, not pooled vectors')
    return outputs
