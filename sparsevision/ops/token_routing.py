"""Token routing: select the tokens to keep, gather them, scatter them back into the full grid, merge tokens.

``select_tokens`` picks each sample's top-k tokens as an index (not
differentiable). ``gather_tokens`` and ``scatter_tokens`` are each other's
adjoint, so each one's gradient is the other. ``merge_tokens`` is ToMe's
size-weighted merge; its gradient is built from ``gather_tokens``. All are
deterministic on CPU and CUDA (no floating-point atomics).
"""
import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)

_gather = torch.ops.sparsevision.gather_tokens.default
_scatter = torch.ops.sparsevision.scatter_tokens.default
_merge = torch.ops.sparsevision.merge_tokens.default
_select = torch.ops.sparsevision.select_tokens.default


def _check_arguments(tokens: torch.Tensor, index: torch.Tensor, num_tokens: int, op: str) -> None:
    if tokens.dim() != 3:
        raise ValueError(f'{op}: tokens must be [batch, tokens, channels], got shape {tuple(tokens.shape)}')
    if not tokens.is_floating_point():
        raise ValueError(f'{op}: tokens must be floating point, got {tokens.dtype}')
    if index.dim() != 2 or index.shape[0] != tokens.shape[0]:
        raise ValueError(f'{op}: index must be [batch={tokens.shape[0]}, count], got shape {tuple(index.shape)}')
    if index.dtype != torch.int64:
        raise ValueError(f'{op}: index must be int64 (torch.long), got {index.dtype}; convert it with index.long()')
    if index.device != tokens.device:
        raise ValueError(f'{op}: index is on {index.device} but tokens are on {tokens.device}')
    if num_tokens < 0:
        raise ValueError(f'{op}: num_tokens must be >= 0, got {num_tokens}')
    if index.numel() and not torch.compiler.is_compiling():
        low, high = (value.item() for value in torch.aminmax(index))
        if low < 0 or high >= num_tokens:
            raise ValueError(f'{op}: index values must lie in [0, {num_tokens}), got range [{low}, {high}]')


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick ``K`` rows per sample: ``out[b, k] = tokens[b, index[b, k]]``.

    Args:
        tokens: ``[B, N, C]`` floating-point features.
        index: ``[B, K]`` int64 row numbers in ``[0, N)``; repeats allowed.

    Returns:
        ``[B, K, C]``; differentiable with respect to ``tokens``.

    Raises:
        ValueError: on wrong shapes, dtypes, devices or out-of-range indices.
    """
    _check_arguments(tokens, index, tokens.shape[1], 'gather_tokens')
    return _gather(tokens, index)


def scatter_tokens(tokens: torch.Tensor, index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Add rows back into a grid of ``num_tokens`` rows (zeros elsewhere).

    Args:
        tokens: ``[B, K, C]`` floating-point features.
        index: ``[B, K]`` int64 destination rows in ``[0, num_tokens)``;
            rows named several times receive the sum.
        num_tokens: ``N``, rows of the output.

    Returns:
        ``[B, N, C]``; differentiable with respect to ``tokens``.

    Raises:
        ValueError: on wrong shapes, dtypes, devices or out-of-range indices.
    """
    _check_arguments(tokens, index, num_tokens, 'scatter_tokens')
    if index.shape[1] != tokens.shape[1]:
        raise ValueError(f'scatter_tokens: index has {index.shape[1]} entries per sample '
                         f'but tokens have {tokens.shape[1]} rows')
    return _scatter(tokens, index, num_tokens)


def _check_merge_arguments(tokens: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor, num_out: int) -> None:
    if num_out < 0:
        raise ValueError(f'merge_tokens: num_out must be >= 0, got {num_out}')
    _check_arguments(tokens, index, num_out, 'merge_tokens')
    batch, num_tokens = tokens.shape[:2]
    if index.shape[1] != num_tokens:
        raise ValueError(f'merge_tokens: index must be [batch, tokens] = [{batch}, {num_tokens}] (one output slot '
                         f'per token), got shape {tuple(index.shape)}')
    if sizes.shape != (batch, num_tokens):
        raise ValueError(f'merge_tokens: sizes must be [batch, tokens] = [{batch}, {num_tokens}] (one size per '
                         f'token), got shape {tuple(sizes.shape)}')
    if sizes.dtype != tokens.dtype:
        raise ValueError(f'merge_tokens: sizes are {sizes.dtype} but tokens are {tokens.dtype}; '
                         'convert them with sizes.to(tokens.dtype)')
    if sizes.device != tokens.device:
        raise ValueError(f'merge_tokens: sizes are on {sizes.device} but tokens are on {tokens.device}; '
                         'move them with sizes.to(tokens.device)')
    if sizes.numel() and not torch.compiler.is_compiling() and not bool((sizes > 0).all()):
        raise ValueError(f'merge_tokens: sizes must be > 0 (how many patches each token stands for), got minimum '
                         f'{sizes.min().item()}; start from torch.ones(batch, tokens) and pass on merged_sizes')


def merge_tokens(tokens: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor, num_out: int):
    """Merge tokens into ``num_out`` slots by size-weighted mean (ToMe's merge, Bolya et al., ICLR 2023).

    ``merged_sizes[b, j]`` is the sum of ``sizes[b, i]`` over the tokens with
    ``index[b, i] == j`` and ``merged[b, j]`` the mean of those tokens weighted
    by their sizes; a slot no token is sent to holds zeros and size 0. ToMe's
    ``(s_dst x_dst + sum s_src x_src) / (s_dst + sum s_src)`` is the case where
    the destination token is sent to a slot together with its sources. Each
    output element is summed in token order by one thread, so the result does
    not depend on the thread count; half and bfloat16 accumulate in float32.

    Args:
        tokens: ``[B, N, C]`` floating-point features.
        sizes: ``[B, N]``, dtype of ``tokens``, all > 0: how many original
            patches each token stands for (ones before the first merge).
        index: ``[B, N]`` int64 output slot of every token, in ``[0, num_out)``.
        num_out: ``M``, the number of output slots.

    Returns:
        ``(merged, merged_sizes)``: ``[B, M, C]`` and ``[B, M]``; differentiable
        with respect to ``tokens`` and ``sizes`` (twice).

    Raises:
        ValueError: on wrong shapes, dtypes or devices, out-of-range indices or sizes <= 0.
    """
    _check_merge_arguments(tokens, sizes, index, num_out)
    return _merge(tokens, sizes, index, num_out)


def unmerge_tokens(merged: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Undo :func:`merge_tokens` for dense outputs: ``out[b, i] = merged[b, index[b, i]]``.

    Every token takes its slot's row, so tokens merged together come back as
    copies of their merged row (ToMe's unmerge). This is :func:`gather_tokens`
    with the merge's ``index``.

    Args:
        merged: ``[B, M, C]`` rows of the merged slots (or features computed from them).
        index: ``[B, N]`` the int64 index given to :func:`merge_tokens`.

    Returns:
        ``[B, N, C]``; differentiable with respect to ``merged``.

    Raises:
        ValueError: on wrong shapes, dtypes, devices or out-of-range indices.
    """
    _check_arguments(merged, index, merged.shape[1], 'unmerge_tokens')
    return _gather(merged, index)


def select_tokens(scores: torch.Tensor, keep: int, num_prefix: int = 0) -> torch.Tensor:
    """Each sample's prefix tokens and its ``keep`` highest-scored tokens, as sequence positions in spatial order.

    Token ``i`` of ``scores`` sits at sequence position ``num_prefix + i``; the
    ``num_prefix`` leading tokens (class, registers) are always kept. Equal
    scores rank by position, lower first (a stable descending sort), so the
    choice is deterministic; NaN ranks after every number, -inf included.
    The index feeds :func:`gather_tokens` directly. Not differentiable: the
    result carries no gradient to ``scores``.

    Args:
        scores: ``[B, M]`` floating-point score of every non-prefix token.
        keep: how many non-prefix tokens to keep, in ``[0, M]``.
        num_prefix: leading tokens that are always kept.

    Returns:
        ``[B, num_prefix + keep]`` int64: ``0 .. num_prefix - 1``, then the
        positions of the kept tokens in ascending order.

    Raises:
        ValueError: if ``scores`` is not 2-D floating point, ``keep`` is outside
            ``[0, M]`` or ``num_prefix`` is negative.
    """
    if scores.dim() != 2:
        raise ValueError(f'select_tokens: scores must be [batch, tokens], got shape {tuple(scores.shape)}')
    if not scores.is_floating_point():
        raise ValueError(f'select_tokens: scores must be floating point, got {scores.dtype}')
    if not 0 <= keep <= scores.shape[1]:
        raise ValueError(f'select_tokens: keep must lie in [0, {scores.shape[1]}] (the number of scored tokens), '
                         f'got {keep}')
    if num_prefix < 0:
        raise ValueError(f'select_tokens: num_prefix must be >= 0, got {num_prefix}')
    return _select(scores, keep, num_prefix)


@torch.library.register_fake('sparsevision::gather_tokens')
def _gather_fake(tokens, index):
    return tokens.new_empty(tokens.shape[0], index.shape[1], tokens.shape[2])


@torch.library.register_fake('sparsevision::scatter_tokens')
def _scatter_fake(tokens, index, num_tokens):
    return tokens.new_empty(tokens.shape[0], num_tokens, tokens.shape[2])


@torch.library.register_fake('sparsevision::merge_tokens')
def _merge_fake(tokens, sizes, index, num_out):
    return tokens.new_empty(tokens.shape[0], num_out, tokens.shape[2]), sizes.new_empty(sizes.shape[0], num_out)


@torch.library.register_fake('sparsevision::select_tokens')
def _select_fake(scores, keep, num_prefix):
    return scores.new_empty(scores.shape[0], num_prefix + keep, dtype=torch.int64)


def _save_index(ctx, inputs, output):
    tokens, index = inputs[0], inputs[1]
    ctx.save_for_backward(index)
    ctx.num_tokens = tokens.shape[1]


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return _scatter(grad.contiguous(), index, ctx.num_tokens), None


def _scatter_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return _gather(grad.contiguous(), index), None, None


torch.library.register_autograd('sparsevision::gather_tokens', _gather_backward, setup_context=_save_index)
torch.library.register_autograd('sparsevision::scatter_tokens', _scatter_backward, setup_context=_save_index)


def _save_merge(ctx, inputs, output):
    tokens, sizes, index, _ = inputs
    ctx.save_for_backward(tokens, sizes, index, *output)


def _merge_backward(ctx, grad_merged, grad_merged_sizes):
    """Gradients of the merge, built from ``gather_tokens`` and elementwise ops so they are differentiable again.

    For token ``i`` in slot ``j`` of size ``S_j`` and mean ``m_j``: ``d tokens_i = sizes_i / S_j * d m_j`` and
    ``d sizes_i = <d m_j, tokens_i - m_j> / S_j + d S_j``.
    """
    tokens, sizes, index, merged, merged_sizes = ctx.saved_tensors
    slot_sizes = _gather(merged_sizes.unsqueeze(-1), index)  # [B, N, 1], > 0: each token's slot contains it
    slot_grad = _gather(grad_merged.contiguous(), index)
    grad_tokens = grad_sizes = None
    if ctx.needs_input_grad[1]:
        deviation = tokens - _gather(merged, index)
        slot_grad_sizes = _gather(grad_merged_sizes.contiguous().unsqueeze(-1), index)
        grad_sizes = ((slot_grad * deviation).sum(-1, keepdim=True) / slot_sizes + slot_grad_sizes).squeeze(-1)
    if ctx.needs_input_grad[0]:
        share = sizes.unsqueeze(-1) / slot_sizes
        # slot_grad is a fresh buffer used last here: scale it in place unless a double backward is being recorded.
        grad_tokens = slot_grad * share if torch.is_grad_enabled() else slot_grad.mul_(share)
    return grad_tokens, grad_sizes, None, None


torch.library.register_autograd('sparsevision::merge_tokens', _merge_backward, setup_context=_save_merge)
