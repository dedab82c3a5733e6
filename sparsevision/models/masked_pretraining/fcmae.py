"""ConvNeXt V2's fully convolutional masked autoencoder, on the sparse engine instead of MinkowskiEngine."""
import torch
import torch.nn as nn
from timm.models.convnext import ConvNeXtBlock

from ...registry import MODELS
from .masked_autoencoder import MaskedAutoencoder


@MODELS.register_module()
class FCMAE(MaskedAutoencoder):
    """FCMAE (Woo et al., ConvNeXt V2, CVPR 2023, https://arxiv.org/abs/2301.00808).

    The encoder's coarsest map (its GRN normalises each sample over its
    visible sites only) is projected, filled with a mask token at hidden
    patches, passed through ConvNeXt blocks and turned into each patch's pixels.

    Args:
        decoder_dim: decoder channels.
        decoder_depth: decoder ConvNeXt blocks.
        **kwargs: :class:`MaskedAutoencoder` arguments (FCMAE's paper predicts raw pixels:
            ``normalize_target=False``).
    """

    def __init__(self, backbone, input_size, decoder_dim: int = 512, decoder_depth: int = 1, **kwargs):
        super().__init__(backbone, input_size, **kwargs)
        self.coarsest = self.scale_strides.index(self.downsample_ratio)
        self.projection = nn.Conv2d(self.scale_channels[self.coarsest], decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = nn.Sequential(*(ConvNeXtBlock(decoder_dim, ls_init_value=1.0) for _ in range(decoder_depth)))
        self.prediction = nn.Conv2d(decoder_dim, self.downsample_ratio**2 * self.in_channels, 1)

    def predict_patches(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        coarsest = self.encode(images, visible)[self.coarsest]
        x = self.projection(coarsest.to_dense())
        x = torch.where(visible[:, None], x, self.mask_token.to(x.dtype))
        x = self.prediction(self.decoder(x))
        return x.flatten(2).transpose(1, 2)
