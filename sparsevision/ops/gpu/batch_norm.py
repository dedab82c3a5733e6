"""CUDA kernels of ``sparsevision::row_batch_norm`` and ``row_batch_norm_backward`` in Triton.

Each op runs three kernels: per-chunk column partials over fixed chunks of ``CHUNK_ROWS`` rows, a combine of those
partials in chunk order (one program per column block), and an element-wise pass. The split depends only on the
shape, never on atomics or scheduling, so results are bitwise the same run to run; nothing waits on the host.
Statistics are those of the CPU kernel (``csrc/cpu/batch_norm.cpp``): chunk sums and squared deviations about the
chunk mean, combined with Chan et al.'s update into the biased variance; the backward uses the stored (rounded)
``mean`` and ``var`` as the CPU does. Arithmetic is fp32 (fp64 for fp64 rows) where the CPU kernel uses double; the
forward sums deviations from the first row (a pivot), so a large common offset costs no precision.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ..devices import check_same_device
from .launch import on_device_of

CHUNK_ROWS = 256
STEP_ROWS = 64
BLOCK_CHUNKS = 32
BLOCK_ROWS = 32
MAX_BLOCK_COLUMNS = 64


@triton.jit
def _load_tile(base, rows, columns, count, column_count, column_valid, ACCUMULATE: tl.constexpr):
    """``base[rows, columns]`` as ACCUMULATE, 0 outside ``[count, column_count]``; also returns the mask."""
    mask = (rows < count)[:, None] & column_valid[None, :]
    tile = tl.load(base + rows.to(tl.int64)[:, None] * column_count + columns[None, :], mask=mask, other=0)
    return tile.to(ACCUMULATE), mask


@triton.jit
def _passed_gradient(grad_out, relu_out, rows, columns, count, column_count, column_valid,
                     HAS_RELU: tl.constexpr, ACCUMULATE: tl.constexpr):
    """The output gradient tile, +0 where a fused ReLU's output is not positive (torch.relu's gradient)."""
    gradient, mask = _load_tile(grad_out, rows, columns, count, column_count, column_valid, ACCUMULATE)
    if HAS_RELU:
        output, _ = _load_tile(relu_out, rows, columns, count, column_count, column_valid, ACCUMULATE)
        gradient = tl.where(output > 0, gradient, 0.0)
    return gradient, mask


@triton.jit
def _pivot(rows, columns, count, column_valid, ACCUMULATE: tl.constexpr):
    """The first row's values (0 without rows): the origin the forward's sums are taken from."""
    return tl.load(rows + columns, mask=column_valid & (count > 0), other=0).to(ACCUMULATE)


@triton.jit
def _chunk_sum(partials, chunks, columns, column_count, column_valid,
               BLOCK_CHUNKS: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Sum over chunks of ``partials[chunk, columns]``, blocks of BLOCK_CHUNKS chunks added in order."""
    total = tl.zeros(columns.shape, ACCUMULATE)
    for start in range(0, chunks, BLOCK_CHUNKS):
        block, _ = _load_tile(partials, start + tl.arange(0, BLOCK_CHUNKS), columns, chunks, column_count,
                              column_valid, ACCUMULATE)
        total += tl.sum(block, axis=0)
    return total


@triton.jit
def chunk_moments_kernel(rows, partial_sums, partial_squares, count, column_count, CHUNK_ROWS: tl.constexpr,
                         STEP_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Per chunk: column sums of ``rows - pivot``, and sums of squared deviations from the chunk's own means."""
    chunk = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    pivot = _pivot(rows, columns, count, column_valid, ACCUMULATE)[None, :]
    first = chunk * CHUNK_ROWS
    sums = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    for step in range(0, CHUNK_ROWS, STEP_ROWS):
        tile, mask = _load_tile(rows, first + step + tl.arange(0, STEP_ROWS), columns, count, column_count,
                                column_valid, ACCUMULATE)
        sums += tl.sum(tl.where(mask, tile - pivot, 0.0), axis=0)
    chunk_mean = sums / tl.minimum(count - first, CHUNK_ROWS)
    squares = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    for step in range(0, CHUNK_ROWS, STEP_ROWS):
        tile, mask = _load_tile(rows, first + step + tl.arange(0, STEP_ROWS), columns, count, column_count,
                                column_valid, ACCUMULATE)
        deviation = tl.where(mask, tile - pivot - chunk_mean[None, :], 0.0)
        squares += tl.sum(deviation * deviation, axis=0)
    tl.store(partial_sums + chunk * column_count + columns, sums, mask=column_valid)
    tl.store(partial_squares + chunk * column_count + columns, squares, mask=column_valid)


@triton.jit
def combine_moments_kernel(rows, partial_sums, partial_squares, weight, bias, mean, var, coefficients, count,
                           column_count, chunks, eps, CHUNK_ROWS: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
                           BLOCK_COLUMNS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           ACCUMULATE: tl.constexpr):
    """``mean``, biased ``var`` (rows' dtype) and ``coefficients = [pivot, mean - pivot, scale, shift]`` (ACCUMULATE)
    per column."""
    columns = tl.program_id(0) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    pivot = _pivot(rows, columns, count, column_valid, ACCUMULATE)
    column_mean = _chunk_sum(partial_sums, chunks, columns, column_count, column_valid, BLOCK_CHUNKS,
                             ACCUMULATE) / count
    squares = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    for start in range(0, chunks, BLOCK_CHUNKS):
        chunk = start + tl.arange(0, BLOCK_CHUNKS)
        sums, mask = _load_tile(partial_sums, chunk, columns, chunks, column_count, column_valid, ACCUMULATE)
        chunk_squares, _ = _load_tile(partial_squares, chunk, columns, chunks, column_count, column_valid,
                                      ACCUMULATE)
        rows_in_chunk = tl.minimum(count - chunk * CHUNK_ROWS, CHUNK_ROWS).to(ACCUMULATE)[:, None]
        offset = sums / rows_in_chunk - column_mean[None, :]
        squares += tl.sum(tl.where(mask, chunk_squares + rows_in_chunk * offset * offset, 0.0), axis=0)
    column_var = squares / count
    scale = 1.0 / tl.sqrt(column_var + eps)
    if HAS_WEIGHT:
        scale *= tl.load(weight + columns, mask=column_valid, other=0).to(ACCUMULATE)
    shift = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    if HAS_BIAS:
        shift = tl.load(bias + columns, mask=column_valid, other=0).to(ACCUMULATE)
    tl.store(mean + columns, (pivot + column_mean).to(mean.dtype.element_ty), mask=column_valid)
    tl.store(var + columns, column_var.to(var.dtype.element_ty), mask=column_valid)
    tl.store(coefficients + columns, pivot, mask=column_valid)
    tl.store(coefficients + column_count + columns, column_mean, mask=column_valid)
    tl.store(coefficients + 2 * column_count + columns, scale, mask=column_valid)
    tl.store(coefficients + 3 * column_count + columns, shift, mask=column_valid)


@triton.jit
def normalise_rows_kernel(rows, residual, coefficients, out, count, column_count, BLOCK_ROWS: tl.constexpr,
                          BLOCK_COLUMNS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
                          ACCUMULATE: tl.constexpr):
    """``out = (rows - pivot - (mean - pivot)) * scale + shift`` rounded to the rows' dtype, plus ``residual`` (added
    as a separate torch add would), then ReLU (NaN stays NaN)."""
    row_ids = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    columns = tl.program_id(1) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    pivot = tl.load(coefficients + columns, mask=column_valid, other=0)[None, :]
    centre = tl.load(coefficients + column_count + columns, mask=column_valid, other=0)[None, :]
    scale = tl.load(coefficients + 2 * column_count + columns, mask=column_valid, other=0)[None, :]
    shift = tl.load(coefficients + 3 * column_count + columns, mask=column_valid, other=0)[None, :]
    tile, mask = _load_tile(rows, row_ids, columns, count, column_count, column_valid, ACCUMULATE)
    value = ((tile - pivot - centre) * scale + shift).to(out.dtype.element_ty)
    if HAS_RESIDUAL:
        added, _ = _load_tile(residual, row_ids, columns, count, column_count, column_valid, ACCUMULATE)
        value = (value.to(ACCUMULATE) + added).to(out.dtype.element_ty)
    if RELU:
        value = tl.where(value < 0, 0.0, value).to(out.dtype.element_ty)
    tl.store(out + row_ids.to(tl.int64)[:, None] * column_count + columns[None, :], value, mask=mask)


@triton.jit
def chunk_gradient_sums_kernel(grad_out, relu_out, rows, mean, partial_sum_g, partial_sum_gx, count, column_count,
                               CHUNK_ROWS: tl.constexpr, STEP_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr,
                               HAS_RELU: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Per chunk: column sums of the passed gradient g and of ``g * (rows - mean)``."""
    chunk = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    column_mean = tl.load(mean + columns, mask=column_valid, other=0).to(ACCUMULATE)
    sum_g = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    sum_gx = tl.zeros((BLOCK_COLUMNS,), ACCUMULATE)
    for step in range(0, CHUNK_ROWS, STEP_ROWS):
        row_ids = chunk * CHUNK_ROWS + step + tl.arange(0, STEP_ROWS)
        gradient, mask = _passed_gradient(grad_out, relu_out, row_ids, columns, count, column_count, column_valid,
                                          HAS_RELU, ACCUMULATE)
        tile, _ = _load_tile(rows, row_ids, columns, count, column_count, column_valid, ACCUMULATE)
        sum_g += tl.sum(gradient, axis=0)
        sum_gx += tl.sum(tl.where(mask, gradient * (tile - column_mean[None, :]), 0.0), axis=0)
    tl.store(partial_sum_g + chunk * column_count + columns, sum_g, mask=column_valid)
    tl.store(partial_sum_gx + chunk * column_count + columns, sum_gx, mask=column_valid)


@triton.jit
def combine_gradient_sums_kernel(partial_sum_g, partial_sum_gx, var, weight, grad_weight, grad_bias, coefficients,
                                 count, column_count, chunks, eps, BLOCK_CHUNKS: tl.constexpr,
                                 BLOCK_COLUMNS: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACCUMULATE: tl.constexpr):
    """``grad_bias``, ``grad_weight`` and ``coefficients = [scale, mean gradient, slope]`` per column."""
    columns = tl.program_id(0) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    sum_g = _chunk_sum(partial_sum_g, chunks, columns, column_count, column_valid, BLOCK_CHUNKS, ACCUMULATE)
    sum_gx = _chunk_sum(partial_sum_gx, chunks, columns, column_count, column_valid, BLOCK_CHUNKS, ACCUMULATE)
    invstd = 1.0 / tl.sqrt(tl.load(var + columns, mask=column_valid, other=0).to(ACCUMULATE) + eps)
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(weight + columns, mask=column_valid, other=0).to(ACCUMULATE)
    tl.store(grad_bias + columns, sum_g.to(grad_bias.dtype.element_ty), mask=column_valid)
    tl.store(grad_weight + columns, (sum_gx * invstd).to(grad_weight.dtype.element_ty), mask=column_valid)
    tl.store(coefficients + columns, scale, mask=column_valid)
    tl.store(coefficients + column_count + columns, sum_g / count, mask=column_valid)
    tl.store(coefficients + 2 * column_count + columns, sum_gx * invstd * invstd / count, mask=column_valid)


@triton.jit
def rows_gradient_kernel(grad_out, relu_out, rows, mean, coefficients, grad_rows, count, column_count,
                         BLOCK_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr, HAS_RELU: tl.constexpr,
                         ACCUMULATE: tl.constexpr):
    """``grad_rows = scale * (g - mean gradient - (rows - mean) * slope)``."""
    row_ids = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    columns = tl.program_id(1) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    column_valid = columns < column_count
    column_mean = tl.load(mean + columns, mask=column_valid, other=0).to(ACCUMULATE)
    scale = tl.load(coefficients + columns, mask=column_valid, other=0)
    mean_gradient = tl.load(coefficients + column_count + columns, mask=column_valid, other=0)
    slope = tl.load(coefficients + 2 * column_count + columns, mask=column_valid, other=0)
    gradient, mask = _passed_gradient(grad_out, relu_out, row_ids, columns, count, column_count, column_valid,
                                      HAS_RELU, ACCUMULATE)
    tile, _ = _load_tile(rows, row_ids, columns, count, column_count, column_valid, ACCUMULATE)
    grad = scale[None, :] * (gradient - mean_gradient[None, :] - (tile - column_mean[None, :]) * slope[None, :])
    tl.store(grad_rows + row_ids.to(tl.int64)[:, None] * column_count + columns[None, :],
             grad.to(grad_rows.dtype.element_ty), mask=mask)


def _launch_shape(rows: torch.Tensor):
    """``(count, columns, chunks, block_columns, accumulate dtype)`` for ``rows`` ``[N, C]``."""
    count, columns = rows.shape
    block_columns = min(MAX_BLOCK_COLUMNS, max(16, triton.next_power_of_2(columns)))
    accumulate = torch.float64 if rows.dtype == torch.float64 else torch.float32
    return count, columns, triton.cdiv(count, CHUNK_ROWS), block_columns, accumulate


def _triton_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_rows(op: str, rows: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor] = None,
                **others: Optional[torch.Tensor]):
    """Raises ValueError unless ``rows`` is ``[N, C]``, ``weight`` and ``bias`` ``[C]`` (or None), all on one device."""
    check_same_device(op, rows=rows, weight=weight, bias=bias, **others)
    if rows.dim() != 2:
        raise ValueError(f'{op}: rows must be [N, C], got {tuple(rows.shape)}')
    for name, tensor in (('weight', weight), ('bias', bias)):
        if tensor is not None and tensor.shape != (rows.shape[1],):
            raise ValueError(f'{op}: {name} must be [{rows.shape[1]}], got {tuple(tensor.shape)}')


def row_batch_norm_cuda(rows: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                        eps: float, relu: bool = False, residual: Optional[torch.Tensor] = None):
    """``(out, mean, var)`` of training-mode batch norm over the rows (see ``ops.batch_norm_rows``).

    Raises:
        ValueError: on mismatched shapes, dtypes or devices.
    """
    _check_rows('row_batch_norm', rows, weight, bias=bias, residual=residual)
    if residual is not None and (residual.shape != rows.shape or residual.dtype != rows.dtype):
        raise ValueError(f'row_batch_norm: residual must be {tuple(rows.shape)} {rows.dtype} like rows, got '
                         f'{tuple(residual.shape)} {residual.dtype}')
    rows, weight, bias = (None if t is None else t.contiguous() for t in (rows, weight, bias))
    count, columns, chunks, block_columns, accumulate = _launch_shape(rows)
    out, mean, var = torch.empty_like(rows), rows.new_empty(columns), rows.new_empty(columns)
    if columns == 0:
        return out, mean, var
    sums, squares = (rows.new_empty(chunks, columns, dtype=accumulate) for _ in range(2))
    coefficients = rows.new_empty(4, columns, dtype=accumulate)
    column_blocks, kind = triton.cdiv(columns, block_columns), _triton_dtype(rows.dtype)
    with on_device_of(rows):   # rows stand in for an absent weight, bias or residual (not read then)
        if chunks:
            chunk_moments_kernel[(chunks, column_blocks)](
                rows, sums, squares, count, columns, CHUNK_ROWS=CHUNK_ROWS, STEP_ROWS=STEP_ROWS,
                BLOCK_COLUMNS=block_columns, ACCUMULATE=kind)
        combine_moments_kernel[(column_blocks,)](
            rows, sums, squares, rows if weight is None else weight, rows if bias is None else bias, mean, var,
            coefficients, count, columns, chunks, eps, CHUNK_ROWS=CHUNK_ROWS, BLOCK_CHUNKS=BLOCK_CHUNKS,
            BLOCK_COLUMNS=block_columns, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACCUMULATE=kind)
        if count:
            normalise_rows_kernel[(triton.cdiv(count, BLOCK_ROWS), column_blocks)](
                rows, rows if residual is None else residual.contiguous(), coefficients, out, count, columns,
                BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLUMNS=block_columns, HAS_RESIDUAL=residual is not None, RELU=relu,
                ACCUMULATE=kind)
    return out, mean, var


def row_batch_norm_backward_cuda(grad_out: torch.Tensor, rows: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                                 weight: Optional[torch.Tensor], eps: float, relu_out: Optional[torch.Tensor] = None):
    """``(grad_rows, grad_weight, grad_bias)`` of :func:`row_batch_norm_cuda`'s ``out``; ``relu_out``: a fused
    ReLU's output, whose gradient passes only where it is positive.

    Raises:
        ValueError: on mismatched shapes or devices.
    """
    _check_rows('row_batch_norm_backward', rows, weight, grad_out=grad_out, mean=mean, var=var, relu_out=relu_out)
    if grad_out.shape != rows.shape or (relu_out is not None and relu_out.shape != rows.shape):
        raise ValueError(f'row_batch_norm_backward: grad_out and relu_out must be {tuple(rows.shape)}')
    if mean.shape != (rows.shape[1],) or var.shape != (rows.shape[1],):
        raise ValueError(f'row_batch_norm_backward: mean and var must be [{rows.shape[1]}]')
    rows, mean, var, weight = (None if t is None else t.contiguous() for t in (rows, mean, var, weight))
    grad_out = grad_out.to(rows.dtype).contiguous()
    relu_out = None if relu_out is None else relu_out.to(rows.dtype).contiguous()
    count, columns, chunks, block_columns, accumulate = _launch_shape(rows)
    grad_rows, grad_weight, grad_bias = torch.empty_like(rows), rows.new_empty(columns), rows.new_empty(columns)
    if columns == 0:
        return grad_rows, grad_weight, grad_bias
    sum_g, sum_gx = (rows.new_empty(chunks, columns, dtype=accumulate) for _ in range(2))
    coefficients = rows.new_empty(3, columns, dtype=accumulate)
    column_blocks, kind = triton.cdiv(columns, block_columns), _triton_dtype(rows.dtype)
    relu_output = grad_out if relu_out is None else relu_out   # unread without a fused ReLU, like the other stand-ins
    with on_device_of(rows):
        if chunks:
            chunk_gradient_sums_kernel[(chunks, column_blocks)](
                grad_out, relu_output, rows, mean, sum_g, sum_gx, count, columns, CHUNK_ROWS=CHUNK_ROWS,
                STEP_ROWS=STEP_ROWS, BLOCK_COLUMNS=block_columns, HAS_RELU=relu_out is not None, ACCUMULATE=kind)
        combine_gradient_sums_kernel[(column_blocks,)](
            sum_g, sum_gx, var, rows if weight is None else weight, grad_weight, grad_bias, coefficients, count,
            columns, chunks, eps, BLOCK_CHUNKS=BLOCK_CHUNKS, BLOCK_COLUMNS=block_columns,
            HAS_WEIGHT=weight is not None, ACCUMULATE=kind)
        if count:
            rows_gradient_kernel[(triton.cdiv(count, BLOCK_ROWS), column_blocks)](
                grad_out, relu_output, rows, mean, coefficients, grad_rows, count, columns, BLOCK_ROWS=BLOCK_ROWS,
                BLOCK_COLUMNS=block_columns, HAS_RELU=relu_out is not None, ACCUMULATE=kind)
    return grad_rows, grad_weight, grad_bias
