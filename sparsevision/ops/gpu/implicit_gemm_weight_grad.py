"""Weight gradient of the implicit-GEMM convolution: ``grad_w[k] = sum_m features[nbr[m, k]]^T @ grad_out[m]``.

The output rows are cut into chunks whose size depends only on the shapes (never on the GPU). Each program sums one
chunk for one tap and one tile of (input, output) channels of one group, in row order, into an fp32 accumulator,
and stores it as a partial ``[chunks, K, C_in / groups, C_out]``; the partials are then summed over chunks in a fixed
order. No atomics, so the result is reproducible bit for bit on the same GPU and Triton version.
"""
import torch
import triton
import triton.language as tl

from .implicit_gemm import is_depthwise
from .triton_settings import NUM_STAGES, NUM_WARPS, block_size, exact_fp32_dot, input_precision, widen_operands

BLOCK_ROWS = 64
EXACT_FP32_BLOCK_ROWS = 32
DEPTHWISE_BLOCK_ROWS = 32
DEPTHWISE_BLOCK_CHANNELS = 64
TARGET_PROGRAMS = 1024     # chunks are added until about this many programs run (a constant: results stay GPU-free)
MIN_CHUNK_ROWS = 512       # ... but no chunk is shorter than this


@triton.jit
def weight_grad_kernel(features, grad_output, neighbors, partials, num_inputs, num_outputs, taps, in_per_group,
                       out_per_group, in_channels, out_channels, chunk_rows, tiles_in, tiles_out,
                       BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr):
    tap = tl.program_id(0) // (tiles_in * tiles_out)
    tile = tl.program_id(0) % (tiles_in * tiles_out)
    group = tl.program_id(1)
    chunk = tl.program_id(2)
    ins = (tile // tiles_out) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = (tile % tiles_out) * BLOCK_O + tl.arange(0, BLOCK_O)
    ins_ok = ins < in_per_group
    outs_ok = outs < out_per_group
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
    for start in range(0, chunk_rows, BLOCK_M):
        rows = (chunk * chunk_rows + start + tl.arange(0, BLOCK_M)).to(tl.int64)
        source = tl.load(neighbors + rows * taps + tap, mask=rows < num_outputs, other=-1)
        present = (source >= 0) & (source < num_inputs)
        if tl.max(present.to(tl.int32)) > 0:
            a = tl.load(features + source.to(tl.int64)[:, None] * in_channels + group * in_per_group + ins[None, :],
                        mask=present[:, None] & ins_ok[None, :], other=0.0)
            b = tl.load(grad_output + rows[:, None] * out_channels + group * out_per_group + outs[None, :],
                        mask=present[:, None] & outs_ok[None, :], other=0.0)
            if WIDEN_OPERANDS:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)
    tap_partial = partials + ((chunk * taps + tap) * in_per_group).to(tl.int64) * out_channels
    tl.store(tap_partial + ins[:, None] * out_channels + group * out_per_group + outs[None, :], acc,
             mask=ins_ok[:, None] & outs_ok[None, :])


@triton.jit
def depthwise_weight_grad_kernel(features, grad_output, neighbors, partials, num_inputs, num_outputs, taps, channels,
                                 chunk_rows, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    tap = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(2)
    columns_ok = columns < channels
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for start in range(0, chunk_rows, BLOCK_M):
        rows = (chunk * chunk_rows + start + tl.arange(0, BLOCK_M)).to(tl.int64)
        source = tl.load(neighbors + rows * taps + tap, mask=rows < num_outputs, other=-1)
        present = (source >= 0) & (source < num_inputs)
        if tl.max(present.to(tl.int32)) > 0:
            mask = present[:, None] & columns_ok[None, :]
            a = tl.load(features + source.to(tl.int64)[:, None] * channels + columns[None, :], mask=mask, other=0.0)
            b = tl.load(grad_output + rows[:, None] * channels + columns[None, :], mask=mask, other=0.0)
            acc += a.to(tl.float32) * b.to(tl.float32)
    tap_partial = partials + (chunk * taps + tap).to(tl.int64) * channels
    tl.store(tap_partial + columns, tl.sum(acc, axis=0), mask=columns_ok)


def weight_grad_tiles(in_per_group: int, out_per_group: int, dtype: torch.dtype, precision: str) -> dict:
    """The tile sizes of :func:`weight_grad_kernel` for these channels per group, dtype and ``tl.dot`` precision."""
    rows = EXACT_FP32_BLOCK_ROWS if exact_fp32_dot(dtype, precision) else BLOCK_ROWS
    return dict(BLOCK_M=rows, BLOCK_I=block_size(in_per_group, 16, 64), BLOCK_O=block_size(out_per_group, 16, 64))


def chunk_rows(num_outputs: int, programs_per_chunk: int, block_rows: int) -> int:
    """Rows per chunk: enough chunks for about ``TARGET_PROGRAMS`` programs, none under ``MIN_CHUNK_ROWS`` rows."""
    chunks = max(1, min(triton.cdiv(num_outputs, MIN_CHUNK_ROWS), triton.cdiv(TARGET_PROGRAMS, programs_per_chunk)))
    return triton.cdiv(triton.cdiv(num_outputs, chunks), block_rows) * block_rows


def implicit_gemm_weight_grad(features: torch.Tensor, grad_output: torch.Tensor, neighbors: torch.Tensor,
                              groups: int) -> torch.Tensor:
    """``[K, C_in / groups, C_out]``: the gradient of the implicit-GEMM convolution's weight.

    The caller has checked shapes and dtypes; map entries outside ``[0, N)`` read as absent. No host sync.
    """
    num_outputs, taps = neighbors.shape
    num_inputs, in_channels = features.shape
    out_channels = grad_output.shape[1]
    in_per_group, out_per_group = in_channels // groups, out_channels // groups
    if num_outputs == 0 or num_inputs == 0 or taps == 0 or out_channels == 0 or in_per_group == 0:
        return features.new_zeros(taps, in_per_group, out_channels)
    features, grad_output, neighbors = features.contiguous(), grad_output.contiguous(), neighbors.contiguous()
    if is_depthwise(in_per_group, out_per_group, groups):
        tiles_out = triton.cdiv(out_channels, DEPTHWISE_BLOCK_CHANNELS)
        rows = chunk_rows(num_outputs, taps * tiles_out, DEPTHWISE_BLOCK_ROWS)
        partials = features.new_empty(triton.cdiv(num_outputs, rows), taps, 1, out_channels, dtype=torch.float32)
        depthwise_weight_grad_kernel[(taps, tiles_out, partials.shape[0])](
            features, grad_output, neighbors, partials, num_inputs, num_outputs, taps, out_channels, rows,
            BLOCK_M=DEPTHWISE_BLOCK_ROWS, BLOCK_C=DEPTHWISE_BLOCK_CHANNELS, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
        return partials.sum(0).to(features.dtype)
    precision = input_precision(features.dtype)
    tiles = weight_grad_tiles(in_per_group, out_per_group, features.dtype, precision)
    tiles_in, tiles_out = triton.cdiv(in_per_group, tiles['BLOCK_I']), triton.cdiv(out_per_group, tiles['BLOCK_O'])
    rows = chunk_rows(num_outputs, taps * tiles_in * tiles_out * groups, tiles['BLOCK_M'])
    partials = features.new_empty(triton.cdiv(num_outputs, rows), taps, in_per_group, out_channels,
                                  dtype=torch.float32)
    weight_grad_kernel[(taps * tiles_in * tiles_out, groups, partials.shape[0])](
        features, grad_output, neighbors, partials, num_inputs, num_outputs, taps, in_per_group, out_per_group,
        in_channels, out_channels, rows, tiles_in, tiles_out, **tiles,
        INPUT_PRECISION=precision, WIDEN_OPERANDS=widen_operands(features.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return partials.sum(0).to(features.dtype)
