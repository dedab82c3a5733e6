"""EViT: keep the tokens the CLS token attends to most, fuse the rest into one token."""
from typing import Dict, Optional, Sequence

import torch

from ... import ops
from ...registry import MODELS
from .attention import AttentionResult
from .router import TokenRouter, check_keep_rate, kept_count
from .state import TokenState


@MODELS.register_module()
class EViTRouter(TokenRouter):
    """EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022, https://arxiv.org/abs/2202.07800).

    After the attention of each block in ``locations``, the non-prefix tokens are ranked by the CLS query's
    attention (mean over heads); the top ``ceil(keep_rate * N)`` stay in their spatial order and the rest
    are fused into one token, their attention-weighted mean, appended at the end.

    Args:
        keep_rate: fraction of non-prefix tokens kept at each location, in (0, 1]; an mmengine
            :class:`~sparsevision.engine.KeepRateScheduleHook` can warm it up from 1.
        locations: block indices that prune.
        fuse_inattentive: append the fused token.
        keep_mass: instead of a fixed count, keep per image the fewest tokens holding this fraction of
            the CLS attention (variable counts: shorter images are padded and masked).
    """

    def __init__(self, keep_rate: float = 0.7, locations: Sequence[int] = (3, 6, 9), fuse_inattentive: bool = True,
                 keep_mass: Optional[float] = None):
        super().__init__(locations)
        self.keep_rate = check_keep_rate(keep_rate)
        self.keep_mass = None if keep_mass is None else check_keep_rate(keep_mass, 'keep_mass')
        self.fuse_inattentive = fuse_inattentive

    @property
    def reduces(self) -> bool:
        return any(self.prunes(index) for index in self.locations)

    def prunes(self, index: int) -> bool:
        return index in self.locations and (self.keep_rate < 1 or self.keep_mass is not None)

    def attention_request(self, state: TokenState, index: int) -> Dict[str, bool]:
        return {'cls_attention': self.prunes(index)}

    def reduce(self, x: torch.Tensor, attention: AttentionResult, state: TokenState, index: int) -> torch.Tensor:
        if not self.prunes(index):
            return x
        prefix = state.num_prefix
        scores = attention.cls_attention[:, prefix:]
        if state.valid is not None:
            scores = scores.masked_fill(~state.valid[:, prefix:], -1.0)   # padding ranks last, is never kept
        rows, valid = self._choose(scores)
        if valid is None and rows.shape[1] == scores.shape[1]:
            return x   # every token kept at this rate
        fused = self._fuse(x[:, prefix:], scores, rows, valid) if self.fuse_inattentive else None
        x = state.keep_rows(x, rows + prefix, valid)
        if fused is not None:
            x = torch.cat([x, fused], dim=1)
            state.append_rows(1)
        return x

    def _choose(self, scores: torch.Tensor):
        """Kept rows ``[B, K]`` in spatial order, and which are real (``None``: all)."""
        candidates = scores.shape[1]
        if self.keep_mass is None:
            return ops.select_tokens(scores, kept_count(self.keep_rate, candidates)), None
        order = scores.argsort(dim=1, descending=True, stable=True)
        mass = scores.clamp(min=0).gather(1, order).cumsum(dim=1)
        counts = ((mass < self.keep_mass * mass[:, -1:]).sum(dim=1) + 1).clamp(max=candidates)
        chosen = order[:, :int(counts.max())]
        valid = torch.arange(chosen.shape[1], device=chosen.device) < counts[:, None]
        spatial = (chosen + (~valid) * candidates).argsort(dim=1)   # real rows first, each part in spatial order
        return chosen.gather(1, spatial), valid.gather(1, spatial)

    @staticmethod
    def _fuse(tokens: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, valid) -> torch.Tensor:
        """The attention-weighted mean ``[B, 1, C]`` of the tokens not kept."""
        dropped = torch.ones_like(scores)
        kept = torch.ones_like(rows, dtype=scores.dtype) if valid is None else valid.to(scores.dtype)
        dropped = dropped.scatter(1, rows, 1 - kept)
        weights = scores.clamp(min=0) * dropped
        total = weights.sum(dim=1, keepdim=True)
        total = torch.where(total > 0, total, torch.ones_like(total))   # nothing dropped: a zero token
        return ((weights / total)[..., None] * tokens).sum(dim=1, keepdim=True)
