"""SparK: masked image modelling for any CNN, with the encoder running sparsely on the visible patches."""
import math
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from ...registry import MODELS
from .decoder import LightDecoder
from .masked_autoencoder import MaskedAutoencoder, patchify


@MODELS.register_module()
class SparK(MaskedAutoencoder):
    """SparK (Tian et al., ICLR 2023, https://arxiv.org/abs/2301.03580).

    Each encoder scale is normalised over its visible sites, filled with a
    learnable mask token at the hidden ones, projected and added into a light
    UNet decoder that predicts the image. Unlike SparK's code, the encoder
    really is sparse (``sparse=True``): it computes at the visible sites only.

    Args:
        decoder_width: decoder channels at the coarsest scale (halved per 2x
            upsampling); default half the encoder's coarsest channels.
        densify_norm: ``'batch'`` (ResNets) or ``'layer'`` (ConvNeXts), applied over visible sites.
        **kwargs: :class:`MaskedAutoencoder` arguments.
    """

    def __init__(self, backbone, input_size, decoder_width: Optional[int] = None, densify_norm: str = 'batch',
                 **kwargs):
        super().__init__(backbone, input_size, **kwargs)
        if densify_norm not in ('batch', 'layer'):
            raise ValueError(f"densify_norm must be 'batch' or 'layer', got {densify_norm!r}")
        upsamplings = int(math.log2(self.downsample_ratio))
        if 2**upsamplings != self.downsample_ratio:
            raise ValueError(f'SparK\'s decoder needs a power-of-two downsample ratio, got {self.downsample_ratio}')
        coarsest = self.scale_strides.index(self.downsample_ratio)
        width = decoder_width or max(self.scale_channels[coarsest] // 2, 2**upsamplings)
        self.decoder = LightDecoder(width, upsamplings, self.in_channels)
        self.levels = [upsamplings - int(math.log2(stride)) for stride in self.scale_strides]
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f'the backbone returns several maps at one stride ({self.scale_strides}); SparK needs '
                             'one map per scale')
        norm = nn.BatchNorm2d if densify_norm == 'batch' else LayerNorm2d
        self.densify_norms = nn.ModuleList(norm(channels) for channels in self.scale_channels)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, channels, 1, 1))
                                            for channels in self.scale_channels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.densify_projections = nn.ModuleList(
            nn.Conv2d(channels, self.decoder.widths[level], 1 if level == 0 else 3, padding=0 if level == 0 else 1)
            for channels, level in zip(self.scale_channels, self.levels))

    def predict_patches(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        scales = [None] * len(self.decoder.widths)
        for index, feature_map in enumerate(self.encode(images, visible)):
            dense = self.densify_norms[index](feature_map).to_dense()
            seen = feature_map.pyramid.mask(*feature_map.size_hw)[:, None]
            filled = torch.where(seen, dense, self.mask_tokens[index].to(dense.dtype))
            scales[self.levels[index]] = self.densify_projections[index](filled)
        return patchify(self.decoder(scales), self.downsample_ratio)
