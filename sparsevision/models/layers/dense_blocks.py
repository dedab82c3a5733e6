"""Dense 2D building blocks shared by the bird's-eye-view neck and heads."""
import torch.nn as nn


def conv2d_norm_act(in_channels: int, out_channels: int, stride: int = 1, eps: float = 1e-5,
                    momentum: float = 0.1) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias) -> ``BatchNorm2d(eps, momentum)`` -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum), nn.ReLU(inplace=True))
