"""Normalisation over the features of a SparseTensor."""
from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from .modules import SparseModule
from .tensor import SparseTensor


def row_batch_norm(rows: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                   weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], training: bool, momentum: float,
                   eps: float, relu: bool = False, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.batch_norm`` over the rows of ``[N, C]``, bitwise the same at any thread count; ``residual``: then added;
    ``relu``: then ReLU.

    PyTorch's CPU batch norm splits its statistics across threads, so its
    rounding depends on the thread count; here batch statistics come from
    :func:`~sparsevision.ops.batch_norm_rows`, whose sums do not (and which
    fuses the residual and the ReLU). Otherwise the same arguments as ``F.batch_norm``.
    """
    if training or running_mean is None:
        count = rows.shape[0]
        if count < 2 and training:
            raise ValueError(f'batch norm in training needs more than one value per channel, got {count} row(s)')
        out, mean, var = ops.batch_norm_rows(rows, weight, bias, eps, relu, residual)
        if training and running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var.to(running_var.dtype) * (count / (count - 1))
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return out
    centred = rows - running_mean.to(rows.dtype)
    scale = torch.rsqrt(running_var.to(rows.dtype) + eps)
    if weight is not None:
        scale = scale * weight
    out = centred * scale if bias is None else torch.addcmul(bias, centred, scale)
    if residual is not None:
        out.add_(residual)
    return torch.relu_(out) if relu else out


class SparseBatchNorm(nn.BatchNorm1d, SparseModule):
    """BatchNorm over all sites of the batch (spconv's ``SparseBatchNorm``); takes a SparseTensor.

    Bitwise deterministic at any thread count (see :func:`row_batch_norm`). :meth:`forward_relu` is
    ``relu(self(x) + residual)`` in one pass, which ``SparseSequential`` and the sparse blocks use for a norm followed
    by ``nn.ReLU`` (and a residual block's tail).
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self._normalise(x, relu=False)

    def forward_relu(self, x: SparseTensor, residual: Optional[torch.Tensor] = None) -> SparseTensor:
        """``relu(self(x))``, or ``relu(self(x).features + residual)``, fused into the norm: no separate pass or
        buffer for the add or the ReLU, and the same bits as running them one by one."""
        return self._normalise(x, relu=True, residual=residual)

    def _normalise(self, x: SparseTensor, relu: bool, residual: Optional[torch.Tensor] = None) -> SparseTensor:
        features = x.features
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f'SparseBatchNorm expects [N, {self.num_features}] features, got '
                             f'{tuple(features.shape)}')
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:   # cumulative moving average, as nn.BatchNorm does
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_statistics = self.training or self.running_mean is None
        return x.replace_feature(row_batch_norm(
            features, self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None, self.weight, self.bias,
            use_batch_statistics, momentum, self.eps, relu, residual))


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
