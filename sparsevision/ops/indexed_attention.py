"""Indexed attention: each query attends only to the keys its row of an index names.

One op behind attention over a window of a grid (neighbourhood attention), over routed regions (BiFormer), over
per-query key lists (Sparsifiner) and over the neighbours a kernel map names (attention on sparse voxels). Keys are
read through the index, never copied: no ``[queries, keys]`` score matrix and no gathered key or value tensor exists.
The backward is deterministic (sums in a fixed order, no float atomics). Native kernels: CPU
(``csrc/cpu/indexed_attention.cpp``) and CUDA (``csrc/cuda/indexed_attention.cu``); without the extension the
reference in :mod:`sparsevision.ops.reference` runs.
"""
from typing import Optional, Tuple

import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)
from .devices import check_same_device
from .map_validation import require_valid

_indexed_attention = torch.ops.sparsevision.indexed_attention.default
_indexed_attention_backward = torch.ops.sparsevision.indexed_attention_backward.default


def indexed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor,
                      bias: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                      return_lse: bool = False):
    """``out[q, h] = sum_l softmax_l(scale * query[q, h] . key[index[q, l], h] + bias[q, h, l]) value[index[q, l], h]``.

    Args:
        query: ``[Nq, H, D]`` (fold a batch into the rows, as the keys' row numbers do).
        key: ``[Nk, H, D]``, same dtype.
        value: ``[Nk, H, Dv]``, same dtype.
        index: ``[Nq, L]`` int32 rows of ``key`` per query, ``-1`` for an empty slot. A key named twice counts twice;
            a query with no key gets zeros.
        bias: optional additive scores, same dtype, with a gradient: ``[Nq, H, L]`` per query and slot (e.g. a
            relative positional bias looked up per slot), or ``[1, H, L]`` per slot for every query (a bias per
            kernel tap over a kernel map).
        scale: the score factor, ``D ** -0.5`` by default.
        return_lse: also return the log-sum-exp ``[Nq, H]`` of each query's scores (float32 for float16/bfloat16,
            ``-inf`` without keys; not differentiable).

    Raises:
        ValueError: mismatched shapes, dtypes or devices, a non-int32 index, or index entries outside ``[-1, Nk)``.
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f'indexed_attention: query, key and value must be [rows, heads, head_dim], got '
                         f'{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}')
    if query.shape[2] == 0:
        raise ValueError(f'indexed_attention: head_dim must be positive, got query of shape {tuple(query.shape)}')
    if key.shape[1:] != query.shape[1:] or value.shape[:2] != key.shape[:2]:
        raise ValueError(f'indexed_attention: key {tuple(key.shape)} and value {tuple(value.shape)} do not fit query '
                         f'{tuple(query.shape)} (same heads and head_dim, one value row per key)')
    if not query.is_floating_point() or key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f'indexed_attention: query, key and value must share one floating dtype, got {query.dtype}, '
                         f'{key.dtype} and {value.dtype}')
    if index.dtype != torch.int32 or index.dim() != 2 or index.shape[0] != query.shape[0]:
        raise ValueError(f'indexed_attention: index must be int32 [queries={query.shape[0]}, slots], got '
                         f'{index.dtype} {tuple(index.shape)}')
    if bias is not None and (bias.dtype != query.dtype or bias.dim() != 3 or bias.shape[0] not in (query.shape[0], 1)
                             or bias.shape[1:] != (query.shape[1], index.shape[1])):
        raise ValueError(f'indexed_attention: bias must be {query.dtype} [queries or 1, heads, slots] = '
                         f'[{query.shape[0]} or 1, {query.shape[1]}, {index.shape[1]}], got {bias.dtype} '
                         f'{tuple(bias.shape)}')
    check_same_device('indexed_attention', query=query, key=key, value=value, index=index, bias=bias)
    require_valid(index, key.shape[0], 'indexed_attention')
    out, lse = _indexed_attention(query, key, value, index, bias, query.shape[-1] ** -0.5 if scale is None else scale)
    return (out, lse) if return_lse else out


@torch.library.register_fake('sparsevision::indexed_attention')
def _indexed_attention_fake(query, key, value, index, bias, scale):
    lse_dtype = torch.promote_types(query.dtype, torch.float32)
    return (query.new_empty(query.shape[0], query.shape[1], value.shape[2]),
            query.new_empty(query.shape[:2], dtype=lse_dtype))


@torch.library.register_fake('sparsevision::indexed_attention_backward')
def _indexed_attention_backward_fake(grad_out, query, key, value, index, bias, out, lse, scale):
    grad_bias = torch.empty_like(bias) if bias is not None else query.new_empty(0)
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), grad_bias


def _setup_context(ctx, inputs, output):
    query, key, value, index, bias, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, key, value, index, bias, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out: torch.Tensor, _grad_lse) -> Tuple:
    query, key, value, index, bias, out, lse = ctx.saved_tensors
    grad_query, grad_key, grad_value, grad_bias = _indexed_attention_backward(
        grad_out.contiguous(), query, key, value, index, bias, out, lse, ctx.scale)
    return grad_query, grad_key, grad_value, None, grad_bias if bias is not None else None, None


torch.library.register_autograd('sparsevision::indexed_attention', _backward, setup_context=_setup_context)
