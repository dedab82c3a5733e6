"""SpAtten-style cascade token pruning by cumulative attention importance."""
from typing import Dict, Sequence

import torch

from ... import ops
from ...registry import MODELS
from .attention import AttentionResult
from .router import TokenRouter, check_keep_rate, kept_count
from .state import TokenState


@MODELS.register_module()
class SpAttenRouter(TokenRouter):
    """Cascade token pruning from SpAtten (Wang et al., HPCA 2021, https://arxiv.org/abs/2012.09852).

    Every block adds the attention each token receives (summed over heads and queries) to its cumulative
    importance; at each block in ``locations`` the non-prefix tokens with the lowest cumulative importance
    are removed for good (cascade: pruned tokens never return). Needs the attention probabilities, so the
    blocks up to the last location run unfused attention. SpAtten's head pruning and progressive
    quantisation are hardware techniques and not implemented.

    Args:
        keep_rate: fraction of non-prefix tokens kept at each location, in (0, 1].
        locations: block indices that prune.
    """

    def __init__(self, keep_rate: float = 0.7, locations: Sequence[int] = (3, 6, 9)):
        super().__init__(locations)
        self.keep_rate = check_keep_rate(keep_rate)

    def start(self, state: TokenState, x: torch.Tensor) -> None:
        if self.locations and self.keep_rate < 1:
            state.importance = torch.zeros(x.shape[:2], dtype=torch.float32, device=x.device)

    def attention_request(self, state: TokenState, index: int) -> Dict[str, bool]:
        return {'received': state.importance is not None and index <= max(self.locations)}

    def reduce(self, x: torch.Tensor, attention: AttentionResult, state: TokenState, index: int) -> torch.Tensor:
        state.importance = state.importance + attention.received.float()
        if index not in self.locations:
            return x
        prefix = state.num_prefix
        scores = state.importance[:, prefix:]
        rows = ops.select_tokens(scores, kept_count(self.keep_rate, scores.shape[1]))
        return state.keep_rows(x, rows + prefix)
