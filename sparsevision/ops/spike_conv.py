"""Event-driven sparse convolution of spikes: work proportional to the non-zero spikes, not the occupied sites.

Same numbers as :func:`~sparsevision.ops.sparse_conv` with one group (the
kernel skips zero spikes, which changes no sum); its backward is that of
``sparse_conv``. The native kernels are CPU (float32/float64) and CUDA (Triton, ``ops/gpu/spike_conv.py``:
float16/bfloat16 accumulate in float32); elsewhere the dense-site ``sparse_conv`` runs instead, with the same result.
"""
import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)
from .sparse_conv import _backward, _setup_context as _conv_setup_context, sparse_conv

_spike_conv = torch.ops.sparsevision.spike_sparse_conv.default
KERNEL_DTYPES = {'cpu': (torch.float32, torch.float64),
                 'cuda': (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def spike_sparse_conv(spikes: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                      inverse_neighbors: torch.Tensor) -> torch.Tensor:
    """``out[m] = sum_k sum_{i: spikes[n, i] != 0} spikes[n, i] * weight[k, i]``, ``n = neighbors[m, k]``.

    For binary spikes that is additions of weight rows only; integer
    multi-spikes scale the row. Equal to ``sparse_conv(spikes, weight,
    neighbors, inverse_neighbors, 1)`` (bitwise for binary spikes and finite weights; layers with at most 8
    outputs run that kernel itself).

    Args:
        spikes: ``[N, C_in]`` spike counts (any values work; zeros are skipped).
        weight: ``[K, C_in, C_out]``, same dtype.
        neighbors: ``[M, K]`` int32 kernel map (``-1`` = no input site).
        inverse_neighbors: ``[N, K]`` transposed map, for the backward pass.

    Raises:
        ValueError: on mismatched shapes, dtypes or kernel maps.
    """
    if spikes.dtype not in KERNEL_DTYPES.get(spikes.device.type, ()):
        return sparse_conv(spikes, weight, neighbors, inverse_neighbors, 1)
    if spikes.dim() != 2 or weight.dim() != 3 or spikes.shape[1] != weight.shape[1]:
        raise ValueError(f'spike_sparse_conv: spikes must be [N, C] and weight [taps, C, out], got '
                         f'{tuple(spikes.shape)} and {tuple(weight.shape)}')
    if neighbors.shape[1] != weight.shape[0] or inverse_neighbors.shape != (spikes.shape[0], weight.shape[0]):
        raise ValueError(f'spike_sparse_conv: kernel maps {tuple(neighbors.shape)} / {tuple(inverse_neighbors.shape)} '
                         f'do not fit {spikes.shape[0]} inputs and {weight.shape[0]} taps')
    if spikes.dtype != weight.dtype:
        raise ValueError(f'spike_sparse_conv: spikes are {spikes.dtype} but weight is {weight.dtype}')
    return _spike_conv(spikes, weight, neighbors, inverse_neighbors)


@torch.library.register_fake('sparsevision::spike_sparse_conv')
def _spike_conv_fake(spikes, weight, neighbors, inverse_neighbors):
    return spikes.new_empty(neighbors.shape[0], weight.shape[2])


def _setup_context(ctx, inputs, output):
    """As ``sparse_conv``'s with one group: its backward serves both."""
    _conv_setup_context(ctx, (*inputs, 1), output)


def _spike_backward(ctx, grad_output):
    grad_spikes, grad_weight, _, _, _ = _backward(ctx, grad_output)
    return grad_spikes, grad_weight, None, None


torch.library.register_autograd('sparsevision::spike_sparse_conv', _spike_backward, setup_context=_setup_context)
