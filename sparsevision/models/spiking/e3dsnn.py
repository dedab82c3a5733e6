"""E-3DSNN: a spiking sparse-convolution backbone for voxelised point clouds, on the sparse engine."""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ...registry import MODELS
from ...sparse import (SparseBatchNorm, SparseGlobalAvgPool, SparseModule, SparseSequential, SparseTensor,
                       SubMConv3d)
from ...sparse.spike_conv import EVENT_THRESHOLD, SpikeSparseConvolution
from .neurons import MultiSpikeNeuron


def spike_conv_unit(in_channels: int, out_channels: int, max_spikes: int, event_threshold: float,
                    **conv_args) -> SparseSequential:
    """Spike sparse convolution: multi-spike neuron -> convolution (event-driven on rare spikes) -> batch norm."""
    return SparseSequential(MultiSpikeNeuron(max_spikes, step_mode='s'),
                            SpikeSparseConvolution(3, in_channels, out_channels, bias=False,
                                                   event_threshold=event_threshold, **conv_args),
                            SparseBatchNorm(out_channels))


class SpikeResidualBlock(SparseModule):
    """Two submanifold spike convolutions with a residual on the membrane (pre-spike) features."""

    def __init__(self, channels: int, max_spikes: int, event_threshold: float):
        super().__init__()
        self.units = SparseSequential(
            spike_conv_unit(channels, channels, max_spikes, event_threshold, kernel_size=3, subm=True),
            spike_conv_unit(channels, channels, max_spikes, event_threshold, kernel_size=3, subm=True))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feature(x.features + self.units(x).features)


@MODELS.register_module()
class E3DSNN(BaseModule):
    """E-3DSNN (Qiu et al., "Efficient 3D Recognition with Event-driven Spike Sparse Convolution", AAAI 2025).

    Spike voxel coding (a submanifold convolution and batch norm on the voxel
    features), then stages of spike sparse convolutions: integer multi-spike
    neurons (``round(clamp(x, 0, D))``) feed convolutions that compute per
    non-zero spike when spikes are rare (:class:`SpikeSparseConvolution`), with
    residuals on the membrane features; each later stage starts with a strided
    k2 s2 spike convolution. Returns the per-sample mean of the last stage's
    spikes (``[B, C]``, for a classification head).

    Args:
        in_channels: voxel feature channels.
        channels: width of each stage.
        depths: residual blocks per stage.
        max_spikes: ``D`` of the multi-spike neurons.
        event_threshold: firing rate below which convolutions run event-driven.
    """

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1, 1), max_spikes: int = 4, event_threshold: float = EVENT_THRESHOLD,
                 init_cfg=None):
        super().__init__(init_cfg)
        if len(channels) != len(depths) or not channels:
            raise ValueError(f'channels and depths must name the same stages, got {channels} and {depths}')
        self.stem = SparseSequential(SubMConv3d(in_channels, channels[0], 3, bias=False),
                                     SparseBatchNorm(channels[0]))
        stages = []
        for index, (width, depth) in enumerate(zip(channels, depths)):
            layers = []
            if index > 0:
                layers.append(spike_conv_unit(channels[index - 1], width, max_spikes, event_threshold,
                                              kernel_size=2, stride=2, indice_key=f'down{index}'))
            layers.extend(SpikeResidualBlock(width, max_spikes, event_threshold) for _ in range(depth))
            stages.append(SparseSequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.output_neuron = MultiSpikeNeuron(max_spikes, step_mode='s')
        self.pool = SparseGlobalAvgPool()
        self.out_channels = channels[-1]

    def encode(self, x: SparseTensor) -> List[SparseTensor]:
        """Every stage's output (membrane features), finest first."""
        outputs = [self.stem(x)]
        for stage in self.stages:
            outputs.append(stage(outputs[-1]))
        return outputs[1:]

    def forward(self, x: SparseTensor) -> Tuple[torch.Tensor]:
        last = self.encode(x)[-1]
        return (self.pool(last.replace_feature(self.output_neuron(last.features))),)


@MODELS.register_module()
class E3DSNNUNet(E3DSNN):
    """E-3DSNN for per-voxel segmentation: the encoder of :class:`E3DSNN`, then for each coarser stage an inverse
    spike convolution back onto the finer stage's sites, added to that stage's features (membrane skip), and a
    residual block. Returns the finest stage's features on the input sites, ``SparseTensor`` ``[N, channels[0]]``.

    Args: as :class:`E3DSNN`.
    """

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1, 1), max_spikes: int = 4, event_threshold: float = EVENT_THRESHOLD,
                 init_cfg=None):
        super().__init__(in_channels, channels, depths, max_spikes, event_threshold, init_cfg)
        self.up = nn.ModuleList(
            spike_conv_unit(channels[index], channels[index - 1], max_spikes, event_threshold, kernel_size=2,
                            inverse=True, indice_key=f'down{index}')
            for index in range(len(channels) - 1, 0, -1))
        self.fuse = nn.ModuleList(SpikeResidualBlock(channels[index - 1], max_spikes, event_threshold)
                                  for index in range(len(channels) - 1, 0, -1))
        self.out_channels = channels[0]

    def forward(self, x: SparseTensor) -> SparseTensor:
        skips = self.encode(x)
        y = skips[-1]
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            y = fuse(skip.replace_feature(skip.features + up(y).features))
        return y
