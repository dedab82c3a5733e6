"""2D convolutions over a dense bird's-eye-view map, fused at one stride (SECOND's RPN with an FPN-style merge)."""
from typing import Sequence

import torch
import torch.nn as nn

from ...registry import MODELS
from ..layers import conv2d_norm_act

SECOND_NORM = dict(eps=1e-3, momentum=0.01)   # SECOND's batch norm settings


@MODELS.register_module()
class BEVNeck(nn.Module):
    """Blocks of 3x3 convolutions at falling resolutions, each upsampled to one common stride, then concatenated.

    Block ``i`` starts with a convolution of stride ``block_strides[i]`` and
    adds ``block_depths[i]`` stride-1 convolutions; its output is upsampled by
    ``upsample_strides[i]`` (a transposed convolution; a 1x1 convolution for 1)
    to ``upsample_channels[i]``. The upsampled maps must share a stride, which
    is the input stride times ``block_strides[0] / upsample_strides[0]``. Maps
    are cropped to the smallest one's size, so odd input sizes work. The
    detector's ``out_size_factor`` is the backbone's BEV stride times that
    ratio. After SECOND (Yan et al., 2018) and its FPN-style neck in mmdet3d.

    Args:
        in_channels: channels of the input BEV map (``C * D`` of a SECOND encoder).
        block_channels: output channels of each block.
        block_depths: stride-1 convolutions after each block's first one.
        block_strides: stride of each block's first convolution (relative to the previous block).
        upsample_strides: upsampling factor of each block's output.
        upsample_channels: channels of each upsampled map; the output has their sum.

    Raises:
        ValueError: lists of different lengths, or blocks that do not meet at one stride.
    """

    def __init__(self, in_channels: int, block_channels: Sequence[int] = (64, 128),
                 block_depths: Sequence[int] = (3, 5), block_strides: Sequence[int] = (1, 2),
                 upsample_strides: Sequence[int] = (1, 2), upsample_channels: Sequence[int] = (128, 128)):
        super().__init__()
        lengths = [len(block_channels), len(block_depths), len(block_strides), len(upsample_strides),
                   len(upsample_channels)]
        if len(set(lengths)) != 1 or lengths[0] == 0:
            raise ValueError('block_channels, block_depths, block_strides, upsample_strides and upsample_channels '
                             f'need one entry per block (at least one block), got lengths {lengths}')
        if min(block_strides) < 1 or min(upsample_strides) < 1:
            raise ValueError(f'strides must be >= 1, got block_strides {list(block_strides)} and '
                             f'upsample_strides {list(upsample_strides)}')
        strides, stride = [], 1
        for block_stride, upsample_stride in zip(block_strides, upsample_strides):
            stride *= block_stride
            strides.append(stride / upsample_stride)
        if len(set(strides)) != 1:
            raise ValueError(f'the upsampled blocks would sit at strides {strides} (cumulative block stride / '
                             'upsample stride); choose upsample_strides that bring every block to the same stride')
        self.blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        channels = in_channels
        for width, depth, block_stride, upsample_stride, out_width in zip(
                block_channels, block_depths, block_strides, upsample_strides, upsample_channels):
            self.blocks.append(nn.Sequential(conv2d_norm_act(channels, width, block_stride, **SECOND_NORM),
                                             *[conv2d_norm_act(width, width, **SECOND_NORM) for _ in range(depth)]))
            if upsample_stride == 1:
                upsample = nn.Conv2d(width, out_width, 1, bias=False)
            else:
                upsample = nn.ConvTranspose2d(width, out_width, upsample_stride, stride=upsample_stride, bias=False)
            self.upsamplers.append(nn.Sequential(upsample, nn.BatchNorm2d(out_width, **SECOND_NORM),
                                                 nn.ReLU(inplace=True)))
            channels = width
        self.out_channels = sum(upsample_channels)
        self.stride = strides[0]

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]`` (rounded up)."""
        upsampled = []
        features = bev
        for block, upsampler in zip(self.blocks, self.upsamplers):
            features = block(features)
            upsampled.append(upsampler(features))
        height, width = min(map_.shape[2] for map_ in upsampled), min(map_.shape[3] for map_ in upsampled)
        return torch.cat([map_[:, :, :height, :width] for map_ in upsampled], dim=1)
