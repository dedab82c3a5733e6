"""Pure-PyTorch references of every sparsevision op.

Each function here is the readable definition of an op: the native kernels in
``csrc/`` are tested against it, and it runs in their place when the extension
``sparsevision._C`` is not built.
"""
from typing import List, Optional

import torch

from .coordinates import (keys_to_coordinates, kernel_offsets, linear_keys, output_spatial_shape,
                          sorted_distinct_keys)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick rows of each sample: ``out[b, k] = tokens[b, index[b, k]]``.

    Args:
        tokens: ``[B, N, C]`` features.
        index: ``[B, K]`` int64 row numbers in ``[0, N)``; repeats are allowed.

    Returns:
        ``[B, K, C]`` gathered rows.
    """
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def scatter_tokens(tokens: torch.Tensor, index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Add rows back into a full grid: ``out[b, index[b, k]] += tokens[b, k]``.

    The adjoint of :func:`gather_tokens`: rows never referenced stay zero and
    rows referenced several times receive the sum.

    Args:
        tokens: ``[B, K, C]`` features.
        index: ``[B, K]`` int64 destination rows in ``[0, num_tokens)``.
        num_tokens: ``N``, the number of rows of the output.

    Returns:
        ``[B, N, C]`` scattered sums.
    """
    batch, _, channels = tokens.shape
    accumulate_dtype = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    out = tokens.new_zeros(batch, num_tokens, channels, dtype=accumulate_dtype)
    out.scatter_add_(1, index.unsqueeze(-1).expand(-1, -1, channels), tokens.to(accumulate_dtype))
    return out.to(tokens.dtype)


def kernel_map(in_indices: torch.Tensor, out_indices: torch.Tensor, spatial_shape: List[int],
               kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
               sites_checked: bool = False) -> torch.Tensor:
    """For every output site and kernel tap, the input row it reads (``-1`` where no input site is there).

    Output site ``o`` reads, through tap ``k``, the input at
    ``o * stride - padding + k * dilation`` (same batch), as in a dense
    convolution. Submanifold convolution is the case ``out_indices = in_indices``,
    stride 1, padding ``kernel // 2 * dilation``.

    Args:
        in_indices: ``[N, 1 + D]`` integer input coordinates (batch first), no duplicates.
        out_indices: ``[M, 1 + D]`` integer output coordinates.
        spatial_shape: the input grid, ``D`` sizes.
        kernel_size, stride, padding, dilation: ``D`` values each.
        sites_checked: the caller checked ``in_indices`` before; a kernel whose check costs a device-to-host copy
            may skip it. The reference always checks.

    Returns:
        ``[M, K]`` int32 input row numbers, ``K = prod(kernel_size)`` taps, last axis fastest.
    """
    offsets = kernel_offsets(kernel_size, dilation, in_indices.device)
    shape = torch.tensor(spatial_shape, device=in_indices.device)
    sorted_keys, order = sorted_distinct_keys(in_indices, spatial_shape, 'kernel_map: in_indices')
    corner = out_indices[:, 1:].to(torch.int64) * torch.tensor(stride, device=shape.device) - torch.tensor(
        padding, device=shape.device)
    candidates = corner[:, None, :] + offsets[None]                       # [M, K, D]
    inside = ((candidates >= 0) & (candidates < shape)).all(dim=-1)
    keys = linear_keys(out_indices[:, :1].expand(-1, offsets.shape[0]), candidates, spatial_shape)
    neighbors = torch.full(keys.shape, -1, dtype=torch.int32, device=keys.device)
    if sorted_keys.numel():
        position = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
        found = inside & (sorted_keys[position] == keys)
        neighbors[found] = order[position[found]].to(torch.int32)
    return neighbors


def downsample_indices(indices: torch.Tensor, spatial_shape: List[int], kernel_size: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], sites_checked: bool = False) -> torch.Tensor:
    """The output sites of a strided sparse convolution: every site some input reaches, sorted.

    Output ``o`` exists when an input ``p`` satisfies ``p = o * stride - padding + k * dilation``
    for some tap ``k`` with ``o`` inside the output grid. ``sites_checked`` as in :func:`kernel_map`.

    Returns:
        ``[M, 1 + D]`` int32 output coordinates in row-major (batch, then axes) order.
    """
    sorted_distinct_keys(indices, spatial_shape, 'downsample_indices: indices')  # validates: no duplicates
    out_shape = output_spatial_shape(spatial_shape, kernel_size, stride, padding, dilation)
    offsets = kernel_offsets(kernel_size, dilation, indices.device)
    step = torch.tensor(stride, device=indices.device)
    numerator = indices[:, None, 1:].to(torch.int64) + torch.tensor(padding, device=step.device) - offsets[None]
    outputs = torch.div(numerator, step, rounding_mode='floor')
    valid = ((numerator % step == 0) & (outputs >= 0) & (outputs < torch.tensor(out_shape, device=step.device))
             ).all(dim=-1)
    batch = indices[:, :1].expand(-1, offsets.shape[0])
    keys = torch.unique(linear_keys(batch[valid], outputs[valid], out_shape))
    return keys_to_coordinates(keys, out_shape)


def invert_kernel_map(neighbors: torch.Tensor, num_inputs: int, map_checked: bool = False) -> torch.Tensor:
    """``[num_inputs, K]`` int32: the output row each input feeds through each tap (``-1`` none).

    An input feeds at most one output per tap, so the entries of ``neighbors`` are only moved, never combined.
    ``map_checked``: the caller knows the map is invertible; a kernel whose check costs a device-to-host copy may
    skip it. The reference always checks.
    """
    if ((neighbors < -1) | (neighbors >= num_inputs)).any():
        raise ValueError(f'invert_kernel_map: kernel map entries must be -1 or input rows in [0, {num_inputs})')
    inverse = torch.full((num_inputs, neighbors.shape[1]), -1, dtype=torch.int32, device=neighbors.device)
    rows, taps = (neighbors >= 0).nonzero(as_tuple=True)
    inverse[neighbors[rows, taps].long(), taps] = rows.to(torch.int32)
    return inverse


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                inverse_neighbors: torch.Tensor, groups: int) -> torch.Tensor:
    """Sparse convolution over a kernel map: ``out[m] = sum_k features[neighbors[m, k]] @ weight[k]`` (per group).

    Args:
        features: ``[N, C_in]`` input features.
        weight: ``[K, C_in / groups, C_out]``; output channel ``o`` reads the input channels of its group.
        neighbors: ``[M, K]`` int32 kernel map (``-1`` = no input).
        inverse_neighbors: ``[N, K]`` the transposed map; used only by the backward pass.
        groups: channel groups (``C_in`` for depthwise).

    Returns:
        ``[M, C_out]``.
    """
    taps, in_per_group, out_channels = weight.shape
    accumulate = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
    grouped_weight = weight.to(accumulate).reshape(taps, in_per_group, groups, out_channels // groups)
    out = features.new_zeros(neighbors.shape[0], out_channels, dtype=accumulate)
    for tap in range(taps):
        rows = (neighbors[:, tap] >= 0).nonzero().flatten()
        gathered = features[neighbors[rows, tap].long()].to(accumulate).reshape(-1, groups, in_per_group)
        out[rows] += torch.einsum('pgi,igo->pgo', gathered, grouped_weight[tap]).reshape(-1, out_channels)
    return out.to(features.dtype)


def spike_sparse_conv(spikes: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                      inverse_neighbors: torch.Tensor) -> torch.Tensor:
    """The event-driven spike convolution's result: :func:`sparse_conv` of the spikes with one group.

    The native kernel adds only the weight rows of non-zero spikes; skipping zeros
    changes no sum, so this dense-site definition is its oracle.
    """
    return sparse_conv(spikes, weight, neighbors, inverse_neighbors, 1)


def sparse_conv_weight_grad(features: torch.Tensor, grad_output: torch.Tensor, neighbors: torch.Tensor,
                            inverse_neighbors: torch.Tensor, groups: int) -> torch.Tensor:
    """Gradient of :func:`sparse_conv` with respect to ``weight``: ``[K, C_in / groups, C_out]``.

    ``inverse_neighbors`` is unused here; the op takes it for its own backward pass.
    """
    taps = neighbors.shape[1]
    in_per_group, out_channels = features.shape[1] // groups, grad_output.shape[1]
    accumulate = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
    grad = features.new_zeros(taps, in_per_group, groups, out_channels // groups, dtype=accumulate)
    for tap in range(taps):
        rows = (neighbors[:, tap] >= 0).nonzero().flatten()
        gathered = features[neighbors[rows, tap].long()].to(accumulate).reshape(-1, groups, in_per_group)
        outputs = grad_output[rows].to(accumulate).reshape(-1, groups, out_channels // groups)
        grad[tap] = torch.einsum('pgi,pgo->igo', gathered, outputs)
    return grad.reshape(taps, in_per_group, out_channels).to(features.dtype)


def merge_tokens(tokens: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor, num_out: int):
    """Size-weighted mean of the tokens sent to each output slot: ToMe's merge.

    ``merged_sizes[b, j]`` sums ``sizes[b, i]`` over the tokens ``i`` with
    ``index[b, i] == j``, and ``merged[b, j]`` is the mean of their rows of
    ``tokens`` weighted by ``sizes``; slots no token is sent to hold zeros and
    size 0. ToMe's three passes: add ``tokens * sizes`` into the slots, add
    ``sizes``, divide. Rows are added in token order; half and bfloat16 are
    computed in float32 and rounded once.

    Args:
        tokens: ``[B, N, C]`` features.
        sizes: ``[B, N]`` how many original patches each token stands for (> 0).
        index: ``[B, N]`` int64 output slot of every token, in ``[0, num_out)``.
        num_out: ``M``, the number of output slots.

    Returns:
        ``(merged, merged_sizes)``: ``[B, M, C]`` and ``[B, M]``.
    """
    batch, num_tokens, channels = tokens.shape
    accumulate_dtype = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    weights = sizes.to(accumulate_dtype)
    slots = (index + num_out * torch.arange(batch, device=index.device)[:, None]).flatten()  # rows of [B * M]
    weighted = (tokens.to(accumulate_dtype) * weights[..., None]).reshape(batch * num_tokens, channels)
    merged = weighted.new_zeros(batch * num_out, channels).index_add_(0, slots, weighted)
    merged_sizes = weights.new_zeros(batch * num_out).index_add_(0, slots, weights.flatten())
    merged = merged / merged_sizes.where(merged_sizes != 0, 1)[:, None]  # empty slots: 0 / 1
    return (merged.view(batch, num_out, channels).to(tokens.dtype),
            merged_sizes.view(batch, num_out).to(sizes.dtype))


def select_tokens(scores: torch.Tensor, keep: int, num_prefix: int) -> torch.Tensor:
    """Prefix positions, then the positions of the ``keep`` highest scores per sample in ascending order.

    Token ``i`` of ``scores`` sits at sequence position ``num_prefix + i``.
    Equal scores rank by position (lower first: a stable descending sort) and
    NaN ranks after every number, -inf included.

    Args:
        scores: ``[B, M]`` one score per non-prefix token.
        keep: how many tokens to keep, in ``[0, M]``.
        num_prefix: leading tokens (class, registers) that are always kept.

    Returns:
        ``[B, num_prefix + keep]`` int64 sequence positions.
    """
    is_nan = scores.isnan()
    by_score = scores.masked_fill(is_nan, -torch.inf).sort(dim=1, descending=True, stable=True).indices
    nan_last = is_nan.gather(1, by_score).to(torch.uint8).sort(dim=1, stable=True).indices
    chosen = by_score.gather(1, nan_last)[:, :keep].sort(dim=1).values + num_prefix
    prefix = torch.arange(num_prefix, device=scores.device).expand(scores.shape[0], -1)
    return torch.cat([prefix, chosen], dim=1)


def column_sums(rows: torch.Tensor) -> torch.Tensor:
    """``rows.sum(0)`` for ``[N, C]``, parallel over columns only (a single column is padded to two, since torch
    splits a one-column sum across threads), so the result does not depend on the thread count."""
    padded = rows if rows.shape[1] > 1 else torch.cat([rows, torch.zeros_like(rows)], dim=1)
    return padded.sum(dim=0)[:rows.shape[1]]


def row_batch_norm(rows: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float, relu: bool = False, residual: Optional[torch.Tensor] = None):
    """Training-mode batch norm over the rows of ``[N, C]``: ``(out, mean, var)``, ``var`` biased; ``residual``:
    added to ``out``; ``relu``: ReLU applied to ``out`` (after the residual)."""
    count = rows.shape[0]
    mean = column_sums(rows) / count
    centred = rows - mean
    var = column_sums(centred * centred) / count
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    out = centred * scale if bias is None else torch.addcmul(bias, centred, scale)
    if residual is not None:
        out = out + residual
    return torch.relu(out) if relu else out, mean, var


def row_batch_norm_backward(grad_out: torch.Tensor, rows: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                            weight: Optional[torch.Tensor], eps: float, relu_out: Optional[torch.Tensor] = None):
    """Gradients of :func:`row_batch_norm`'s ``out`` for ``rows``, ``weight`` and ``bias``; ``relu_out``: the output
    of a fused ReLU, whose gradient passes only where it is positive."""
    if relu_out is not None:
        grad_out = torch.where(relu_out > 0, grad_out, torch.zeros_like(grad_out))
    count = rows.shape[0]
    invstd = torch.rsqrt(var + eps)
    normalised = (rows - mean) * invstd
    grad_bias = column_sums(grad_out)
    grad_weight = column_sums(grad_out * normalised)
    scale = invstd if weight is None else invstd * weight
    grad_rows = scale * (grad_out - grad_bias / count - normalised * (grad_weight / count))
    return grad_rows, grad_weight, grad_bias


# The CUDA gather-GEMM path (csrc/cuda/gather_gemm_conv.cu) computes the same functions.
gather_gemm_conv = sparse_conv
gather_gemm_conv_weight_grad = sparse_conv_weight_grad


def indexed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor,
                      bias: Optional[torch.Tensor], scale: float):
    """Attention where each query attends only to the keys its row of ``index`` names.

    ``out[q, h] = sum_l p[q, h, l] * value[index[q, l], h]`` with ``p = softmax_l(scale * query[q, h] .
    key[index[q, l], h] + bias[q, h, l])`` over the slots ``l`` whose ``index[q, l] >= 0``. A key named twice is
    attended twice. A query with no key gets zeros and a log-sum-exp of ``-inf``.

    Args:
        query: ``[Nq, H, D]``; key: ``[Nk, H, D]``; value: ``[Nk, H, Dv]``.
        index: ``[Nq, L]`` int32 rows of ``key`` (``-1`` = an empty slot).
        bias: ``[Nq, H, L]`` (or ``[1, H, L]`` for every query) added to the scores, or None.
        scale: the score factor, usually ``D ** -0.5``.

    Returns:
        ``(out [Nq, H, Dv], lse [Nq, H])``: the log-sum-exp of each query's scores, in float32 for float16/bfloat16
        inputs (the backward recomputes the probabilities from it).
    """
    accumulate = torch.promote_types(query.dtype, torch.float32)
    valid = index >= 0
    keys, values = (_rows_or_zeros(table, index).to(accumulate) for table in (key, value))   # [Nq, L, H, D]
    scores = torch.einsum('qhd,qlhd->qhl', query.to(accumulate), keys) * scale
    if bias is not None:
        scores = scores + bias.to(accumulate)
    has_key = valid.any(dim=1)
    # empty slots score -inf, except in a query without keys, where finite scores keep the gradients finite
    filler = torch.where(has_key, float('-inf'), 0.0).to(accumulate)[:, None, None]
    scores = torch.where(valid[:, None, :], scores, filler)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None]) * valid[:, None, :]
    out = torch.einsum('qhl,qlhd->qhd', probs, values)
    return out.to(query.dtype), torch.where(has_key[:, None], lse, float('-inf'))


def _rows_or_zeros(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``, with zeros where ``index`` is -1 (which picks the zero row appended at the end)."""
    return torch.cat([table, table.new_zeros(1, *table.shape[1:])])[index.long()]


def indexed_attention_backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               index: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                               lse: torch.Tensor, scale: float):
    """Gradients of :func:`indexed_attention` for ``query``, ``key``, ``value`` and ``bias`` (an empty tensor when
    ``bias`` is None); ``out`` and ``lse`` are the forward's results."""
    inputs = [tensor.detach().requires_grad_() for tensor in (query, key, value)]
    if bias is not None:
        inputs.append(bias.detach().requires_grad_())
    with torch.enable_grad():
        result, _ = indexed_attention(*inputs[:3], index, inputs[3] if bias is not None else None, scale)
        grads = torch.autograd.grad(result, inputs, grad_out, allow_unused=True)
    grads = [torch.zeros_like(tensor) if grad is None else grad for grad, tensor in zip(grads, inputs)]
    return (*grads[:3], grads[3] if bias is not None else query.new_empty(0))
