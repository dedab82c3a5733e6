"""ResNet backbone (He et al., 2016) with a stem for small images."""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ...registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, with a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _projection(in_channels: int, out_channels: int, stride: int):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


ARCHITECTURES = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


@MODELS.register_module()
class ResNet(BaseModule):
    """ResNet (He et al., 2016, https://arxiv.org/abs/1512.03385).

    Args:
        depth: 10, 18, 34, 50 or 101.
        in_channels: channels of the input image.
        base_channels: width of the first stage (64 in the paper).
        small_input: a single 3x3 stride-1 stem and no max-pool, for images of
            about 32x32 (CIFAR-style); otherwise the 7x7 stride-2 stem and max-pool.
        out_indices: stages whose outputs are returned (0-based).
        init_cfg: mmengine initialisation config.
    """

    def __init__(self, depth: int = 18, in_channels: int = 3, base_channels: int = 64, small_input: bool = False,
                 out_indices: Sequence[int] = (3,), init_cfg=None):
        super().__init__(init_cfg)
        if depth not in ARCHITECTURES:
            raise ValueError(f'ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}')
        if not out_indices or any(not 0 <= i < 4 for i in out_indices):
            raise ValueError(f'out_indices must be stage numbers in [0, 4), got {out_indices}')
        block, blocks_per_stage = ARCHITECTURES[depth]
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, base_channels, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(base_channels), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, base_channels, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(base_channels), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        self.out_indices = tuple(out_indices)
        stages, channels_in = [], base_channels
        for stage, num_blocks in enumerate(blocks_per_stage):
            channels = base_channels * 2**stage
            layers = []
            for i in range(num_blocks):
                layers.append(block(channels_in, channels, stride=2 if i == 0 and stage > 0 else 1))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(base_channels * 2**i * block.expansion for i in range(4))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.out_indices:
                outputs.append(x)
        return tuple(outputs)
