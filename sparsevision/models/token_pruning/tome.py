"""ToMe: merge the most similar tokens by bipartite soft matching, tracking how many patches each holds."""
import numbers
from typing import Dict, Sequence, Tuple, Union

import torch

from ...registry import MODELS
from .attention import AttentionResult
from .router import TokenRouter
from .state import TokenState


@MODELS.register_module()
class ToMeRouter(TokenRouter):
    """Token Merging (Bolya et al., ICLR 2023, https://arxiv.org/abs/2210.09461), written from the paper.

    After each block's attention, the non-prefix tokens are split alternately into sets A and B; each A
    token finds its most similar B token (cosine similarity of the keys, mean over heads); the ``r`` best
    pairs are merged into size-weighted means (``sparsevision.ops.merge_tokens``), so the sequence shrinks
    by ``r``. Prefix tokens (CLS, distillation, registers) never merge. With proportional attention every
    key's logit gets ``+log(size)``, which keeps fused attention (SDPA with an additive mask).

    Args:
        r: tokens merged per block, an integer >= 0 (0: no merging): one for every block, or one per block.
        proportional_attention: add ``log(size)`` to the attention logits.
    """

    tracks_sizes = True

    def __init__(self, r: Union[int, Sequence[int]] = 8, proportional_attention: bool = True):
        super().__init__()
        self.r = check_merge_counts(r)
        self.proportional_attention = proportional_attention
        self.schedule = ()

    def bind(self, depth: int, embed_dim: int, num_prefix: int, num_patches: int) -> None:
        schedule = [self.r] * depth if isinstance(self.r, int) else list(self.r)
        if len(schedule) != depth:
            raise ValueError(f'ToMeRouter: r has {len(schedule)} values but the model has {depth} blocks')
        tokens = num_patches
        for index, merged in enumerate(schedule):
            if merged > tokens // 2:
                raise ValueError(f'ToMeRouter: r={merged} at block {index} is more than half of the {tokens} '
                                 'mergeable tokens there; lower r')
            tokens -= merged
        self.schedule = tuple(schedule)
        self.locations = tuple(index for index, merged in enumerate(schedule) if merged > 0)

    def start(self, state: TokenState, x: torch.Tensor) -> None:
        if self.locations:
            state.sizes = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
            state.proportional_attention = self.proportional_attention

    def attention_request(self, state: TokenState, index: int) -> Dict[str, bool]:
        return {'keys': self.schedule[index] > 0}

    def reduce(self, x: torch.Tensor, attention: AttentionResult, state: TokenState, index: int) -> torch.Tensor:
        merged = self.schedule[index]
        if merged == 0:
            return x
        slots, num_slots = bipartite_merge_slots(attention.keys, state.num_prefix, merged)
        return state.merge_rows(x, slots, num_slots)


def check_merge_counts(r) -> Union[int, Tuple[int, ...]]:
    """``r`` as an int or a tuple of ints; a ValueError naming ``r`` unless every count is an integer >= 0."""
    per_block = hasattr(r, '__iter__') and not isinstance(r, (str, bytes))
    counts = list(r) if per_block else [r]
    if any(isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0 for count in counts):
        raise ValueError(f'ToMeRouter: r (tokens merged per block) must be an integer >= 0 (0: no merging), or '
                         f'one such integer per block; got {r!r}')
    return tuple(int(count) for count in counts) if per_block else int(r)


def bipartite_merge_slots(keys: torch.Tensor, num_prefix: int, merged: int):
    """Output slot of every token after merging ``merged`` A tokens into their most similar B tokens.

    Returns ``(slots [B, N], N - merged)``: prefix tokens first, then the unmerged A tokens and the B tokens,
    each in their original order; a merged A token shares its partner's slot.
    """
    batch, tokens, _ = keys.shape
    metric = keys[:, num_prefix:]
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    set_a, set_b = metric[:, 0::2], metric[:, 1::2]
    best, partner = (set_a @ set_b.transpose(1, 2)).max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    size_a = set_a.shape[1]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(size_a, device=keys.device).expand(batch, -1))
    is_source = rank < merged
    # unmerged A tokens keep their order: their slot is the count of unmerged A tokens before them
    unmerged_position = (~is_source).long().cumsum(dim=1) - 1
    first_b_slot = num_prefix + size_a - merged
    slots_a = torch.where(is_source, first_b_slot + partner, num_prefix + unmerged_position)
    slots_b = first_b_slot + torch.arange(set_b.shape[1], device=keys.device).expand(batch, -1)
    slots = torch.empty(batch, tokens, dtype=torch.long, device=keys.device)
    slots[:, :num_prefix] = torch.arange(num_prefix, device=keys.device)
    slots[:, num_prefix::2] = slots_a
    slots[:, num_prefix + 1::2] = slots_b
    return slots, tokens - merged
