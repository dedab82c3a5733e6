"""Token routing: gather kept tokens, scatter them back into the full grid.

These two ops are each other's adjoint, so each one's gradient is the other.
Both are deterministic on CPU and CUDA (no floating-point atomics).
"""
import torch

from . import library  # noqa: F401  (defines the ops and loads their kernels)

_gather = torch.ops.sparsevision.gather_tokens.default
_scatter = torch.ops.sparsevision.scatter_tokens.default


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


@torch.library.register_fake('sparsevision::gather_tokens')
def _gather_fake(tokens, index):
    return tokens.new_empty(tokens.shape[0], index.shape[1], tokens.shape[2])


@torch.library.register_fake('sparsevision::scatter_tokens')
def _scatter_fake(tokens, index, num_tokens):
    return tokens.new_empty(tokens.shape[0], num_tokens, tokens.shape[2])


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
