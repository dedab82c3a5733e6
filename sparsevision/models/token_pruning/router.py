"""The interface every token-reduction method implements, and the block that drives it."""
import math
import numbers
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from .attention import AttentionResult, attend
from .state import TokenState


def check_keep_rate(keep_rate: float, name: str = 'keep_rate') -> float:
    """``keep_rate`` as a float; a ValueError naming the argument ``name`` unless it is a number in (0, 1]."""
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, numbers.Real) or not 0 < keep_rate <= 1:
        raise ValueError(f'{name} must lie in (0, 1] (a fraction kept), got {keep_rate!r}')
    return float(keep_rate)


def check_block_indices(indices: Sequence[int], name: str) -> Tuple[int, ...]:
    """``indices`` as a tuple of ints; a ValueError naming the argument ``name`` for anything but integers."""
    if isinstance(indices, (str, bytes)) or not hasattr(indices, '__iter__'):
        raise ValueError(f'{name} must be a sequence of block indices, got {indices!r}')
    wrong = [index for index in indices if isinstance(index, bool) or not isinstance(index, numbers.Integral)]
    if wrong:
        raise ValueError(f'{name} must hold integer block indices, got {wrong} in {indices!r}')
    return tuple(int(index) for index in indices)


def kept_count(keep_rate: float, candidates: int) -> int:
    """``ceil(keep_rate * candidates)`` (at least one), robust to float round-off."""
    return max(1, min(candidates, math.ceil(keep_rate * candidates - 1e-9)))


class TokenRouter(nn.Module):
    """Decides, block by block, which tokens go on.

    A block runs ``before_block`` -> attention (asking :meth:`attention_request` for extras) -> ``reduce``
    -> MLP. Blocks where a router asks for nothing and nothing is masked run timm's own ``Block.forward``,
    so a router that never reduces gives timm's outputs exactly.

    Args:
        locations: block indices after whose attention tokens are reduced.
    """

    tracks_sizes = False   # merging methods carry token sizes (proportional attention)

    def __init__(self, locations: Sequence[int] = ()):
        super().__init__()
        self.locations = check_block_indices(locations, 'locations')

    def bind(self, depth: int, embed_dim: int, num_prefix: int, num_patches: int) -> None:
        """Check the schedule against the model (and create parameters that depend on it)."""
        outside = [index for index in self.locations if not 0 <= index < depth]
        if outside:
            raise ValueError(f'{type(self).__name__}: locations {outside} are not blocks of a {depth}-block model')

    @property
    def reduces(self) -> bool:
        """Whether inference changes anything (``False``: the model computes timm's dense ViT, bitwise)."""
        return bool(self.locations)

    def start(self, state: TokenState, x: torch.Tensor) -> None:
        """Initialise per-forward state (sizes, importance) for input tokens ``x``."""

    def before_block(self, x: torch.Tensor, state: TokenState, index: int) -> torch.Tensor:
        return x

    def attention_request(self, state: TokenState, index: int) -> Dict[str, bool]:
        """Extras :func:`~.attention.attend` should return at block ``index``."""
        return {}

    def reduce(self, x: torch.Tensor, attention: AttentionResult, state: TokenState, index: int) -> torch.Tensor:
        """Reduce tokens after block ``index``'s attention; called where :meth:`attention_request` asked for
        something (or a mask or bias is active)."""
        return x

    def losses(self, state: TokenState) -> Dict[str, torch.Tensor]:
        """Auxiliary training losses of the method (e.g. DynamicViT's keep-ratio loss)."""
        return {}


def run_block(block: nn.Module, x: torch.Tensor, router: TokenRouter, state: TokenState, index: int) -> torch.Tensor:
    """One timm ``Block`` with the router's reduction between attention and MLP."""
    x = router.before_block(x, state, index)
    state.tokens_per_block.append(x.shape[1])
    state.heads_per_block.append(block.attn.num_heads if state.heads is None else state.heads.shape[1])
    request = router.attention_request(state, index)
    keep = state.keep if block.training else None
    bias = state.attention_bias(x.dtype)
    if not any(request.values()) and keep is None and bias is None and state.heads is None:
        return block(x)
    attention = attend(block.attn, block.norm1(x), bias=bias, keep=keep, heads=state.heads, **request)
    x = x + block.drop_path1(block.ls1(attention.output))
    x = router.reduce(x, attention, state, index)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
