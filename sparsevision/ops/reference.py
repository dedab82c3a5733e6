"""Pure-PyTorch references of every sparsevision op.

Each function here is the readable definition of an op: the native kernels in
``csrc/`` are tested against it, and it runs in their place when the extension
``sparsevision._C`` is not built.
"""
import torch


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
