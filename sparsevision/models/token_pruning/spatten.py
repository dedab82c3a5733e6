"""SpAtten-style cascade token and head pruning by cumulative importance."""
from typing import Dict, Optional, Sequence

import torch

from ... import ops
from ...registry import MODELS
from .attention import AttentionResult
from .router import TokenRouter, check_block_indices, check_keep_rate, kept_count
from .state import TokenState


@MODELS.register_module()
class SpAttenRouter(TokenRouter):
    """Cascade token pruning from SpAtten (Wang et al., HPCA 2021, https://arxiv.org/abs/2012.09852).

    Every block adds the attention each token receives (summed over heads and queries) to its cumulative
    importance; at each block in ``locations`` the non-prefix tokens with the lowest cumulative importance
    are removed for good (cascade: pruned tokens never return). Needs the attention probabilities, so the
    blocks up to the last location run unfused attention.

    Cascade head pruning (optional, ``head_keep_rate < 1``): every block adds the L1 norm of each head's
    attention output to that head index's cumulative importance; at each block in ``head_locations`` each
    sample keeps the ``ceil(head_keep_rate * H')`` most important of its ``H'`` remaining heads, and later
    blocks compute attention for those heads only (the others output zeros; the qkv and output projections
    stay whole). SpAtten's progressive quantisation is a hardware technique and not implemented.

    Args:
        keep_rate: fraction of non-prefix tokens kept at each location, in (0, 1].
        locations: block indices that prune tokens.
        head_keep_rate: fraction of the remaining heads kept at each head location, in (0, 1].
        head_locations: block indices that prune heads (default: ``locations``).
    """

    def __init__(self, keep_rate: float = 0.7, locations: Sequence[int] = (3, 6, 9), head_keep_rate: float = 1.0,
                 head_locations: Optional[Sequence[int]] = None):
        super().__init__(locations)
        self.keep_rate = check_keep_rate(keep_rate)
        self.head_keep_rate = check_keep_rate(head_keep_rate, 'head_keep_rate')
        self.head_locations = (self.locations if head_locations is None
                               else check_block_indices(head_locations, 'head_locations'))
        self.prunes_tokens = bool(self.locations) and self.keep_rate < 1
        self.prunes_heads = bool(self.head_locations) and self.head_keep_rate < 1

    @property
    def reduces(self) -> bool:
        return self.prunes_tokens or self.prunes_heads

    def bind(self, depth: int, embed_dim: int, num_prefix: int, num_patches: int) -> None:
        super().bind(depth, embed_dim, num_prefix, num_patches)
        outside = [index for index in self.head_locations if not 0 <= index < depth]
        if outside:
            raise ValueError(f'SpAttenRouter: head_locations {outside} are not blocks of a {depth}-block model')

    def start(self, state: TokenState, x: torch.Tensor) -> None:
        if self.prunes_tokens:
            state.importance = torch.zeros(x.shape[:2], dtype=torch.float32, device=x.device)

    def attention_request(self, state: TokenState, index: int) -> Dict[str, bool]:
        return {'received': self.prunes_tokens and index <= max(self.locations),
                'head_importance': self.prunes_heads and index <= max(self.head_locations)}

    def reduce(self, x: torch.Tensor, attention: AttentionResult, state: TokenState, index: int) -> torch.Tensor:
        if attention.head_importance is not None:
            self.prune_heads(attention.head_importance, state, index)
        if attention.received is None:
            return x
        state.importance = state.importance + attention.received.float()
        if index not in self.locations:
            return x
        prefix = state.num_prefix
        scores = state.importance[:, prefix:]
        rows = ops.select_tokens(scores, kept_count(self.keep_rate, scores.shape[1]))
        return state.keep_rows(x, rows + prefix)

    def prune_heads(self, importance: torch.Tensor, state: TokenState, index: int) -> None:
        """Accumulate head importance; at a head location keep each sample's most important remaining heads."""
        state.head_importance = importance if state.head_importance is None else state.head_importance + importance
        if index not in self.head_locations:
            return
        remaining = (state.heads if state.heads is not None else
                     torch.arange(importance.shape[1], device=importance.device).expand(importance.shape[0], -1))
        picks = ops.select_tokens(state.head_importance.gather(1, remaining),
                                  kept_count(self.head_keep_rate, remaining.shape[1]))
        state.heads = remaining.gather(1, picks)
