"""Sparse convolution of spikes that computes per non-zero spike when spikes are rare."""
from typing import Optional

import torch

from .. import ops
from ..ops.coordinates import IntOrSequence
from .conv import SparseConvolution
from .tensor import KernelMap


SAMPLED_ROWS = 4096


def estimate_firing_rate(features: torch.Tensor) -> float:
    """Share of non-zero entries in an evenly spaced sample of about ``SAMPLED_ROWS`` rows (deterministic).

    Counting every entry would cost as much as the event-driven convolution it decides on.
    """
    step = max(1, features.shape[0] // SAMPLED_ROWS)
    sample = features[::step]
    return torch.count_nonzero(sample).item() / max(sample.numel(), 1)


EVENT_THRESHOLD = 0.6   # firing rate up to which the event-driven kernel is the faster one (see below)


class SpikeSparseConvolution(SparseConvolution):
    """:class:`SparseConvolution` for spike inputs: event-driven below a measured firing rate.

    Each call estimates the share of non-zero input features from a sample of rows. Below
    ``event_threshold`` it runs :func:`~sparsevision.ops.spike_sparse_conv`
    (work ~ spikes: for binary spikes, additions of weight rows only); above it
    the dense-site :func:`~sparsevision.ops.sparse_conv` (work ~ sites), which
    is faster when most channels fire. Both give the same numbers, so the choice
    only changes the time. Sites follow the usual kernel map (E-3DSNN's spike
    sparse convolution, Qiu et al., AAAI 2025).

    Args:
        event_threshold: firing rate below which the event-driven kernel runs
            (:data:`EVENT_THRESHOLD`, 0.6: on the street scene at C = 64 the event-driven op is 1.2x faster
            than the dense-site one at 50 % and 1.1x at 60 % (binary or multi-spikes), 0.97x at 70 %).
        The others as in :class:`SparseConvolution` (``groups`` must be 1 for the event-driven path).
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: IntOrSequence = 3,
                 stride: IntOrSequence = 1, padding: IntOrSequence = 0, dilation: IntOrSequence = 1, groups: int = 1,
                 bias: bool = True, subm: bool = False, inverse: bool = False, indice_key: Optional[str] = None,
                 event_threshold: Optional[float] = None):
        super().__init__(ndim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, subm,
                         inverse, indice_key)
        event_threshold = EVENT_THRESHOLD if event_threshold is None else event_threshold
        if not 0 <= event_threshold <= 1:
            raise ValueError(f'event_threshold is a firing rate in [0, 1], got {event_threshold}')
        self.event_threshold = event_threshold

    def convolve(self, features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
        if self.groups == 1 and estimate_firing_rate(features) < self.event_threshold:
            return ops.spike_sparse_conv(features, weight, kernel_map.neighbors, kernel_map.inverse)
        return super().convolve(features, weight, kernel_map)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, event_threshold={self.event_threshold}'
