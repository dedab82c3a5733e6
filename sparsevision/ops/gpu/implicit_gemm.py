"""Output-stationary implicit-GEMM sparse convolution in Triton: ``out[m] = sum_k features[nbr[m, k]] @ weight[k]``.

Each program owns a tile of output rows x output channels of one channel group. It walks the taps in order (skipping
a tap that no row of the tile has) and the input channels in tiles, gathers the input rows the map names with masked
loads (an absent tap, ``-1``, or an entry outside ``[0, N)`` reads zeros; nothing is read out of bounds), multiplies
with ``tl.dot`` into an fp32 accumulator and stores the tile once. No atomics: the same inputs give the same bits on
the same GPU and Triton version. Depthwise layers (one input and one output channel per group) have their own kernel,
which multiplies element-wise over a tile of channels.
"""
import torch
import triton
import triton.language as tl

from .triton_settings import NUM_STAGES, NUM_WARPS, block_size, exact_fp32_dot, input_precision, widen_operands

BLOCK_ROWS = 64
EXACT_FP32_BLOCK_ROWS = 32
DEPTHWISE_BLOCK_ROWS = 32
DEPTHWISE_BLOCK_CHANNELS = 64


@triton.jit
def implicit_gemm_kernel(features, weight, neighbors, out, num_inputs, num_outputs, taps, in_per_group,
                         out_per_group, in_channels, out_channels,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    group = tl.program_id(2)
    row_ok = rows < num_outputs
    outs_ok = outs < out_per_group
    out_columns = group * out_per_group + outs
    map_rows = neighbors + rows.to(tl.int64) * taps
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(taps):
        source = tl.load(map_rows + tap, mask=row_ok, other=-1)
        present = (source >= 0) & (source < num_inputs)
        if tl.max(present.to(tl.int32)) > 0:
            input_rows = features + source.to(tl.int64)[:, None] * in_channels + group * in_per_group
            tap_weight = weight + tap * in_per_group * out_channels + out_columns[None, :]
            for start in range(0, in_per_group, BLOCK_K):
                ins = start + tl.arange(0, BLOCK_K)
                ins_ok = ins < in_per_group
                a = tl.load(input_rows + ins[None, :], mask=present[:, None] & ins_ok[None, :], other=0.0)
                b = tl.load(tap_weight + ins[:, None] * out_channels, mask=ins_ok[:, None] & outs_ok[None, :],
                            other=0.0)
                if WIDEN_OPERANDS:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    out_rows = out + rows.to(tl.int64)[:, None] * out_channels
    tl.store(out_rows + out_columns[None, :], acc.to(out.dtype.element_ty), mask=row_ok[:, None] & outs_ok[None, :])


@triton.jit
def depthwise_kernel(features, weight, neighbors, out, num_inputs, num_outputs, taps, channels,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < num_outputs
    columns_ok = columns < channels
    map_rows = neighbors + rows.to(tl.int64) * taps
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for tap in range(taps):
        source = tl.load(map_rows + tap, mask=row_ok, other=-1)
        present = (source >= 0) & (source < num_inputs)
        if tl.max(present.to(tl.int32)) > 0:
            a = tl.load(features + source.to(tl.int64)[:, None] * channels + columns[None, :],
                        mask=present[:, None] & columns_ok[None, :], other=0.0)
            w = tl.load(weight + tap * channels + columns, mask=columns_ok, other=0.0)
            acc += a.to(tl.float32) * w.to(tl.float32)[None, :]
    out_rows = out + rows.to(tl.int64)[:, None] * channels
    tl.store(out_rows + columns[None, :], acc.to(out.dtype.element_ty), mask=row_ok[:, None] & columns_ok[None, :])


def forward_tiles(in_per_group: int, out_per_group: int, dtype: torch.dtype, precision: str) -> dict:
    """The tile sizes of :func:`implicit_gemm_kernel` for these channels per group, dtype and ``tl.dot`` precision.

    fp32 operands take twice the registers of fp16/bf16, so they get shallower input-channel tiles.
    """
    rows = EXACT_FP32_BLOCK_ROWS if exact_fp32_dot(dtype, precision) else BLOCK_ROWS
    depth = 16 if dtype == torch.float32 else block_size(in_per_group, 16, 32)
    return dict(BLOCK_M=rows, BLOCK_N=block_size(out_per_group, 16, 64), BLOCK_K=depth)


def is_depthwise(in_per_group: int, out_per_group: int, groups: int) -> bool:
    return groups > 1 and in_per_group == 1 and out_per_group == 1


def implicit_gemm_conv(features: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                       groups: int) -> torch.Tensor:
    """``[M, C_out]``: the convolution of ``features`` ``[N, C_in]`` with ``weight`` ``[K, C_in / groups, C_out]``.

    The caller has checked shapes and dtypes; map entries outside ``[0, N)`` read as absent. No host sync.
    """
    num_outputs, taps = neighbors.shape
    num_inputs, in_channels = features.shape
    out_channels = weight.shape[2]
    in_per_group, out_per_group = in_channels // groups, out_channels // groups
    if num_outputs == 0 or num_inputs == 0 or taps == 0 or out_channels == 0 or in_channels == 0:
        return features.new_zeros(num_outputs, out_channels)
    features, weight, neighbors = features.contiguous(), weight.contiguous(), neighbors.contiguous()
    out = features.new_empty(num_outputs, out_channels)
    if is_depthwise(in_per_group, out_per_group, groups):
        grid = (triton.cdiv(num_outputs, DEPTHWISE_BLOCK_ROWS), triton.cdiv(out_channels, DEPTHWISE_BLOCK_CHANNELS))
        depthwise_kernel[grid](features, weight, neighbors, out, num_inputs, num_outputs, taps, out_channels,
                               BLOCK_M=DEPTHWISE_BLOCK_ROWS, BLOCK_C=DEPTHWISE_BLOCK_CHANNELS,
                               num_warps=NUM_WARPS, num_stages=NUM_STAGES)
        return out
    precision = input_precision(features.dtype)
    tiles = forward_tiles(in_per_group, out_per_group, features.dtype, precision)
    grid = (triton.cdiv(num_outputs, tiles['BLOCK_M']), triton.cdiv(out_per_group, tiles['BLOCK_N']), groups)
    implicit_gemm_kernel[grid](features, weight, neighbors, out, num_inputs, num_outputs, taps, in_per_group,
                               out_per_group, in_channels, out_channels, **tiles, INPUT_PRECISION=precision,
                               WIDEN_OPERANDS=widen_operands(features.dtype),
                               num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out
