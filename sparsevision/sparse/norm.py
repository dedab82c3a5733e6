"""Normalisation over the features of a SparseTensor."""
import torch
import torch.nn as nn

from .modules import SparseModule
from .tensor import SparseTensor


class SparseBatchNorm(nn.BatchNorm1d, SparseModule):
    """BatchNorm over all sites of the batch (spconv's ``SparseBatchNorm``); takes a SparseTensor."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feature(super().forward(x.features))


class SparseGroupNorm(SparseModule):
    """GroupNorm per sample: statistics over one sample's sites and the channels of a group.

    ``SparseGroupNorm(1, C)`` is the per-sample LayerNorm. Unlike BatchNorm it
    does not mix samples, and empty sites never enter the statistics.

    Args:
        num_groups: channel groups.
        num_channels: feature width.
        eps: added to the variance.
        affine: learnable per-channel scale and shift.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f'num_channels ({num_channels}) must be divisible by num_groups ({num_groups})')
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        features = x.features
        if features.shape[1] != self.num_channels:
            raise ValueError(f'SparseGroupNorm expects {self.num_channels} channels, got {features.shape[1]}')
        grouped = features.reshape(features.shape[0], self.num_groups, -1)
        batch = x.indices[:, 0].long()
        normalised = torch.empty_like(grouped)
        for sample in batch.unique().tolist():
            rows = (batch == sample).nonzero().flatten()
            members = grouped[rows]
            mean = members.mean(dim=(0, 2), keepdim=True)
            variance = members.var(dim=(0, 2), unbiased=False, keepdim=True)
            normalised = normalised.index_put((rows,), (members - mean) / torch.sqrt(variance + self.eps))
        out = normalised.reshape_as(features)
        if self.weight is not None:
            out = out * self.weight + self.bias
        return x.replace_feature(out)
