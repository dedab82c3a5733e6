"""Meta-SpikeFormer (Spike-driven Transformer V2): convolutional spiking blocks, then spike-driven self-attention."""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ...ops.coordinates import as_integer
from ...registry import MODELS
from .neurons import LIFNeuron


def spiking_neuron(v_threshold: float = 1.0) -> LIFNeuron:
    """The multi-step LIF neuron of Spike-driven Transformer V2 (tau 2, hard reset, detached reset)."""
    return LIFNeuron(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode='m')


class PerStep(nn.Module):
    """Apply a stateless module to every time step of ``[T, B, ...]`` at once (as ``[T * B, ...]``)."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch = x.shape[:2]
        y = self.body(x.flatten(0, 1))
        return y.reshape(steps, batch, *y.shape[1:])


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> PerStep:
    return PerStep(nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                             bias=False), nn.BatchNorm2d(out_channels))


class SpikingConvBlock(nn.Module):
    """Separable spiking convolution (pointwise, 7x7 depthwise, pointwise) and a spiking 3x3 channel MLP,
    each with a membrane-potential shortcut, so every convolution reads spikes."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.separable = nn.Sequential(spiking_neuron(), conv_bn(channels, hidden), spiking_neuron(),
                                       PerStep(nn.Conv2d(hidden, hidden, 7, 1, 3, groups=hidden, bias=False)),
                                       conv_bn(hidden, channels))
        self.mlp = nn.Sequential(spiking_neuron(), conv_bn(channels, hidden, 3), spiking_neuron(),
                                 conv_bn(hidden, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.separable(x)
        return x + self.mlp(x)


class SpikeDrivenSelfAttention(nn.Module):
    """Spike-driven self-attention: binary Q, K, V; ``Q (K^T V)`` per head, no softmax, then a spiking threshold.

    Every product multiplies spikes, so it reduces to additions; the ``K^T V``
    order makes it linear in the number of tokens.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f'channels ({channels}) must divide into {heads} heads')
        self.heads, self.scale = heads, 0.125
        self.input_neuron = spiking_neuron()
        self.query, self.key, self.value = (conv_bn(channels, channels) for _ in range(3))
        self.query_neuron, self.key_neuron, self.value_neuron = spiking_neuron(), spiking_neuron(), spiking_neuron()
        self.attention_neuron = spiking_neuron(v_threshold=0.5)
        self.projection = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch, channels, height, width = x.shape
        spikes = self.input_neuron(x)

        def heads(projection, neuron):   # [T, B, heads, tokens, C / heads]
            y = neuron(projection(spikes)).flatten(3)
            return y.reshape(steps, batch, self.heads, channels // self.heads, height * width).transpose(-1, -2)

        query, key, value = heads(self.query, self.query_neuron), heads(self.key, self.key_neuron), \
            heads(self.value, self.value_neuron)
        attended = query @ (key.transpose(-1, -2) @ value) * self.scale
        attended = attended.transpose(-1, -2).reshape(steps, batch, channels, height, width)
        return self.projection(self.attention_neuron(attended))


class SpikingTransformerBlock(nn.Module):
    """Spike-driven self-attention and a spiking 1x1 MLP, each with a membrane-potential shortcut."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.attention = SpikeDrivenSelfAttention(channels, heads)
        self.mlp = nn.Sequential(spiking_neuron(), conv_bn(channels, channels * mlp_ratio), spiking_neuron(),
                                 conv_bn(channels * mlp_ratio, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + self.mlp(x)


@MODELS.register_module()
class MetaSpikeFormer(BaseModule):
    """Meta-SpikeFormer (Yao et al., "Spike-driven Transformer V2", ICLR 2024), at a size for small images.

    Two stages of convolutional spiking blocks, then spiking transformer
    blocks, each stage opened by a stride-2 3x3 convolution. Static images are
    repeated over ``time_steps`` (the first convolution sees real values, as in
    the paper); ``[B, T, C, H, W]`` inputs (event frames) are used as given.
    Returns the final spikes averaged over time and space, ``[B, C]``.

    Args:
        in_channels: input channels (1 for digits, 2 polarities for event frames).
        channels: widths of the two convolutional stages and the transformer stage.
        conv_depths: convolutional blocks in each of the first two stages.
        transformer_depth: transformer blocks.
        heads: attention heads.
        time_steps: ``T`` for static images.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128),
                 conv_depths: Sequence[int] = (1, 1), transformer_depth: int = 2, heads: int = 4,
                 time_steps: int = 4, init_cfg=None):
        super().__init__(init_cfg)
        if len(channels) != 3 or len(conv_depths) != 2:
            raise ValueError(f'channels names three stages and conv_depths two, got {channels} and {conv_depths}')
        self.time_steps = as_integer(time_steps, 'time_steps', minimum=1)
        stages, width = [], in_channels
        for index, depth in enumerate(conv_depths):
            downsample = (conv_bn(width, channels[index], 3, 2) if index == 0 else
                          nn.Sequential(spiking_neuron(), conv_bn(width, channels[index], 3, 2)))
            stages.append(nn.Sequential(downsample, *(SpikingConvBlock(channels[index]) for _ in range(depth))))
            width = channels[index]
        stages.append(nn.Sequential(nn.Sequential(spiking_neuron(), conv_bn(width, channels[2], 3, 2)),
                                    *(SpikingTransformerBlock(channels[2], heads) for _ in range(transformer_depth))))
        self.stages = nn.ModuleList(stages)
        self.output_neuron = spiking_neuron()
        self.out_channels = channels[2]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.time_steps, *x.shape)
        elif x.dim() == 5:
            x = x.transpose(0, 1)   # [B, T, C, H, W] -> time first
        else:
            raise ValueError(f'MetaSpikeFormer takes [B, C, H, W] images or [B, T, C, H, W] frames, got '
                             f'{tuple(x.shape)}')
        for stage in self.stages:
            x = stage(x)
        return (self.output_neuron(x).flatten(3).mean(dim=(0, 3)),)
