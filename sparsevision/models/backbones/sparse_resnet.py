"""A sparse residual network for classifying voxelised shapes, on the sparse engine."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ...registry import MODELS
from ...sparse import SparseGlobalAvgPool, SparseSequential, SparseTensor
from ..layers import SparseBasicBlock, conv_norm_act
from ..layers.sparse_blocks import DEFAULT_NORM_CFG


@MODELS.register_module()
class SparseResNet(BaseModule):
    """Sparse ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) on occupied voxels.

    A submanifold kernel-3 stem, then stages of residual :class:`SparseBasicBlock` s; every stage after the first
    starts with a kernel-3 stride-2 sparse convolution (padding 1, so odd-sized grids keep every site) that halves
    the grid and widens the features. Returns the per-sample mean of the last stage's features, ``([B, C],)``, for
    ``ImageClassifier`` + ``ClassificationHead`` (zeros for a sample without sites).

    Args:
        in_channels: voxel feature channels.
        channels: width of each stage.
        depths: residual blocks per stage (``(2, 2, 2, 2)``: ResNet-18's layout).
        norm_cfg: batch norm config (``type`` ``'BN1d'``, ``eps``, ``momentum``).
        init_cfg: mmengine initialisation config.

    Attributes:
        out_channels: width of the pooled features (``channels[-1]``).
    """

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (2, 2, 2, 2), norm_cfg: Optional[dict] = DEFAULT_NORM_CFG, init_cfg=None):
        super().__init__(init_cfg)
        if len(channels) != len(depths) or not channels:
            raise ValueError(f'channels and depths must name the same stages, got {channels} and {depths}')
        self.stem = conv_norm_act(in_channels, channels[0], 3, 'stem', norm_cfg=norm_cfg)
        stages = []
        for index, (width, depth) in enumerate(zip(channels, depths)):
            units = []
            if index > 0:
                units.append(conv_norm_act(channels[index - 1], width, 3, f'down{index}', stride=2, padding=1,
                                           conv_type='SparseConv3d', norm_cfg=norm_cfg))
            units.extend(SparseBasicBlock(width, width, norm_cfg) for _ in range(depth))
            stages.append(SparseSequential(*units))
        self.stages = nn.ModuleList(stages)
        self.pool = SparseGlobalAvgPool()
        self.out_channels = channels[-1]

    def forward(self, x: SparseTensor) -> Tuple[torch.Tensor]:
        if not isinstance(x, SparseTensor) or x.ndim != 3:
            raise ValueError(f'SparseResNet takes a 3-D SparseTensor (indices (batch, z, y, x)), got {x!r}')
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return (self.pool(x),)
