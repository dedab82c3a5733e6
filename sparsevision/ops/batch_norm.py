"""Training-mode batch norm over the rows of ``[N, C]`` (the sites of a sparse tensor), with autograd.

One op computes the output and the batch statistics, another the three gradients, each in a few passes over the
rows; both are bitwise the same at any thread count (see ``csrc/cpu/batch_norm.cpp``). On CUDA they run Triton
kernels (``ops/gpu/batch_norm.py``), bitwise the same run to run.
"""
from typing import Optional, Tuple

import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)

_batch_norm = torch.ops.sparsevision.row_batch_norm.default
_batch_norm_backward = torch.ops.sparsevision.row_batch_norm_backward.default


def batch_norm_rows(rows: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    eps: float, relu: bool = False,
                    residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, mean, var)``: ``out = (rows - mean) / sqrt(var + eps) * weight + bias`` with the rows' own mean and
    biased variance per column, plus ``residual`` when given, then ``relu(out)`` when ``relu`` (a residual block's
    tail in one pass: no separate add or ReLU pass or buffer, and the same bits as running them one by one).
    ``mean`` and ``var`` are returned detached (for running averages).

    Raises:
        ValueError: if ``rows`` is not ``[N, C]`` with ``N >= 1``, ``weight``/``bias`` are not ``[C]``, or
            ``residual`` is not ``[N, C]`` of ``rows``' dtype.
    """
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise ValueError(f'batch_norm_rows: rows must be [N >= 1, C], got {tuple(rows.shape)}')
    for name, tensor in (('weight', weight), ('bias', bias)):
        if tensor is not None and tensor.shape != (rows.shape[1],):
            raise ValueError(f'batch_norm_rows: {name} must be [{rows.shape[1]}], got {tuple(tensor.shape)}')
    if residual is not None and (residual.shape != rows.shape or residual.dtype != rows.dtype):
        raise ValueError(f'batch_norm_rows: residual must be {tuple(rows.shape)} {rows.dtype} like rows, got '
                         f'{tuple(residual.shape)} {residual.dtype}')
    out, mean, var = _batch_norm(rows, weight, bias, eps, relu, residual)
    return out, mean.detach(), var.detach()


@torch.library.register_fake('sparsevision::row_batch_norm')
def _batch_norm_fake(rows, weight, bias, eps, relu=False, residual=None):
    return torch.empty_like(rows), rows.new_empty(rows.shape[1]), rows.new_empty(rows.shape[1])


@torch.library.register_fake('sparsevision::row_batch_norm_backward')
def _batch_norm_backward_fake(grad_out, rows, mean, var, weight, eps, relu_out=None):
    return torch.empty_like(rows), rows.new_empty(rows.shape[1]), rows.new_empty(rows.shape[1])


def _setup_context(ctx, inputs, output):
    rows, weight, bias, eps, relu, residual = inputs
    out, mean, var = output
    ctx.save_for_backward(rows, weight, mean, var, out if relu else None)   # a fused ReLU's output masks gradients
    ctx.eps, ctx.bias_dtype = eps, None if bias is None else bias.dtype


def _backward(ctx, grad_out, grad_mean, grad_var):
    """Gradients reach ``rows``, ``weight``, ``bias`` and ``residual`` through ``out`` only (``mean`` and ``var``
    leave detached); the residual's is the output gradient, masked by a fused ReLU as ``torch.relu``'s."""
    rows, weight, mean, var, relu_out = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_rows, grad_weight, grad_bias = _batch_norm_backward(grad_out, rows, mean, var, weight, ctx.eps, relu_out)
    needs = ctx.needs_input_grad   # as many entries as arguments were passed (residual may be left out)
    grad_residual = None
    if len(needs) > 5 and needs[5]:
        grad_residual = grad_out if relu_out is None else torch.ops.aten.threshold_backward(grad_out, relu_out, 0)
    return (grad_rows if needs[0] else None, grad_weight.to(weight.dtype) if needs[1] else None,
            grad_bias.to(ctx.bias_dtype) if needs[2] else None, None, None, grad_residual)[:len(needs)]


torch.library.register_autograd('sparsevision::row_batch_norm', _backward, setup_context=_setup_context)
