"""CUDA kernel of ``sparsevision::spike_sparse_conv`` in Triton.

Output-stationary: each program owns a block of output rows and output channels and adds, tap by tap and then input
channel by input channel (the CPU kernel's order), ``spike * weight row`` into an fp32 accumulator (fp64 for fp64),
rounding once at the end. Absent taps (``-1``) and out-of-range map entries are masked loads that add nothing. No
atomics and no host sync; binary spikes with finite weights give the CPU kernel's bits for float32.
"""
import torch
import triton
import triton.language as tl

from ..devices import check_same_device
from ..map_validation import require_valid
from .launch import on_device_of

BLOCK_ROWS = 32
MAX_BLOCK_OUT = 64


@triton.jit
def spike_conv_kernel(spikes, weight, neighbors, out, inputs, outputs, taps, in_channels, out_channels,
                      BLOCK_ROWS: tl.constexpr, BLOCK_OUT: tl.constexpr, ACCUMULATE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    columns = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_valid = rows < outputs
    column_valid = columns < out_channels
    acc = tl.zeros((BLOCK_ROWS, BLOCK_OUT), ACCUMULATE)
    for tap in range(taps):
        site = tl.load(neighbors + rows.to(tl.int64) * taps + tap, mask=row_valid, other=-1)
        present = (site >= 0) & (site < inputs)
        site_spikes = spikes + site.to(tl.int64) * in_channels
        tap_weight = weight + tap * in_channels * out_channels + columns
        for channel in range(in_channels):
            spike = tl.load(site_spikes + channel, mask=present, other=0).to(ACCUMULATE)
            weight_row = tl.load(tap_weight + channel * out_channels, mask=column_valid, other=0).to(ACCUMULATE)
            acc += spike[:, None] * weight_row[None, :]
    targets = out + rows.to(tl.int64)[:, None] * out_channels + columns[None, :]
    tl.store(targets, acc.to(out.dtype.element_ty), mask=row_valid[:, None] & column_valid[None, :])


def spike_sparse_conv_cuda(spikes: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                           inverse_neighbors: torch.Tensor) -> torch.Tensor:
    """``out[m] = sum_k sum_i spikes[neighbors[m, k], i] * weight[k, i]`` (``ops.spike_sparse_conv``).

    Raises:
        ValueError: on mismatched shapes, dtypes or devices, or map entries other than -1 or rows of ``spikes``.
    """
    check_same_device('spike_sparse_conv', spikes=spikes, weight=weight, neighbors=neighbors)
    if spikes.dim() != 2 or weight.dim() != 3 or spikes.shape[1] != weight.shape[1] or neighbors.dim() != 2 \
            or neighbors.shape[1] != weight.shape[0]:
        raise ValueError(f'spike_sparse_conv: spikes [N, C], weight [taps, C, out] and neighbors [M, taps] do not '
                         f'fit: {tuple(spikes.shape)}, {tuple(weight.shape)}, {tuple(neighbors.shape)}')
    if spikes.dtype != weight.dtype or neighbors.dtype != torch.int32:
        raise ValueError(f'spike_sparse_conv: spikes and weight must share a dtype and neighbors be int32, got '
                         f'{spikes.dtype}, {weight.dtype}, {neighbors.dtype}')
    if weight.numel() >= 2**31:
        raise ValueError('spike_sparse_conv: weight has 2^31 elements or more; use sparse_conv')
    require_valid(neighbors, spikes.shape[0], 'spike_sparse_conv')
    spikes, weight, neighbors = spikes.contiguous(), weight.contiguous(), neighbors.contiguous()
    (outputs, taps), (in_channels, out_channels) = neighbors.shape, weight.shape[1:]
    out = spikes.new_empty(outputs, out_channels)
    if out.numel() == 0:
        return out
    block_out = min(MAX_BLOCK_OUT, max(16, triton.next_power_of_2(out_channels)))
    accumulate = tl.float64 if spikes.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(outputs, BLOCK_ROWS), triton.cdiv(out_channels, block_out))
    with on_device_of(spikes):
        spike_conv_kernel[grid](spikes, weight, neighbors, out, spikes.shape[0], outputs, taps, in_channels,
                                out_channels, BLOCK_ROWS=BLOCK_ROWS, BLOCK_OUT=block_out, ACCUMULATE=accumulate)
    return out
