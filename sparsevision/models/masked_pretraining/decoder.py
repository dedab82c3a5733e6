"""SparK's light hierarchical decoder: UNet-style upsampling blocks that add each densified encoder scale."""
from typing import List, Optional

import torch
import torch.nn as nn


class UpsamplingBlock(nn.Sequential):
    """2x transposed convolution, then two 3x3 convolutions with batch norm and ReLU6."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU6(True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU6(True))


class LightDecoder(nn.Module):
    """From stride ``2**upsamplings`` back to the input resolution, halving the width at every step.

    Args:
        width: channels at the coarsest scale; scale ``j`` (stride ``2**(upsamplings - j)``) has ``width / 2**j``.
        upsamplings: number of 2x steps (log2 of the encoder's downsample ratio).
        out_channels: image channels to predict.
    """

    def __init__(self, width: int, upsamplings: int, out_channels: int):
        super().__init__()
        self.widths = [max(width // 2**j, 1) for j in range(upsamplings + 1)]
        self.blocks = nn.ModuleList(UpsamplingBlock(self.widths[j], self.widths[j + 1]) for j in range(upsamplings))
        self.head = nn.Conv2d(self.widths[-1], out_channels, 1)

    def forward(self, scales: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """``scales[j]``: the densified encoder map at scale ``j`` (coarsest first, ``upsamplings + 1`` entries) or
        ``None`` where the encoder has no map at that stride; ``scales[0]`` is required."""
        x = scales[0]
        for block, skip in zip(self.blocks, scales[1:]):
            x = block(x)
            if skip is not None:
                x = x + skip
        return self.head(x)
