"""What a token router tracks through one forward pass, and the shared keep/merge steps."""
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ...ops import gather_tokens, merge_tokens


@dataclass
class TokenState:
    """Per-forward bookkeeping of a pruned or merged token sequence.

    Attributes:
        num_prefix: leading tokens never pruned or merged (CLS, distillation and register tokens).
        source: ``[B, P]`` int64: for each of the ``P`` original patches, the row of the current
            sequence that carries it (``-1`` once it was dropped).
        sizes: ``[B, N]`` patches each token stands for (merging), else ``None``.
        proportional_attention: add ``log(sizes)`` to the attention logits.
        valid: ``[B, N]`` bool, ``False`` for padding rows when images keep different counts, else ``None``.
        keep: ``[B, N]`` soft keep mask of training-time pruning (tokens stay, attention masks them).
        importance: ``[B, N]`` cumulative attention received (SpAtten).
        heads: ``[B, H']`` int64 attention heads each sample still computes (SpAtten head pruning), else ``None``.
        head_importance: ``[B, H]`` cumulative L1 norm of each head's output (SpAtten head pruning).
        recovered: ``[B, P, C]`` last features of every patch (token recovery for dense outputs).
        history: ``source`` after each reduction, for visualisation.
        tokens_per_block: sequence length entering each block (FLOPs analysis).
        heads_per_block: attention heads each block computes (FLOPs analysis).
        keep_ratios: realised keep fractions of training-time pruning, per stage (ratio loss).
    """

    num_prefix: int
    source: torch.Tensor
    sizes: Optional[torch.Tensor] = None
    proportional_attention: bool = False
    valid: Optional[torch.Tensor] = None
    keep: Optional[torch.Tensor] = None
    importance: Optional[torch.Tensor] = None
    heads: Optional[torch.Tensor] = None
    head_importance: Optional[torch.Tensor] = None
    recovered: Optional[torch.Tensor] = None
    history: List[torch.Tensor] = field(default_factory=list)
    tokens_per_block: List[int] = field(default_factory=list)
    heads_per_block: List[int] = field(default_factory=list)
    keep_ratios: List[torch.Tensor] = field(default_factory=list)

    @classmethod
    def start(cls, x: torch.Tensor, num_prefix: int, track_features: bool = False) -> 'TokenState':
        batch, tokens, _ = x.shape
        patches = torch.arange(num_prefix, tokens, device=x.device).expand(batch, -1).contiguous()
        state = cls(num_prefix=num_prefix, source=patches)
        if track_features:
            state.recovered = x[:, num_prefix:]
        return state

    def attention_bias(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Additive key bias ``[B, 1, 1, N]``: ``log(size)`` (proportional attention) and ``-inf`` on padding."""
        bias = None
        if self.sizes is not None and self.proportional_attention:
            bias = self.sizes.log()[:, None, None, :].to(dtype)
        if self.valid is not None:
            padding = torch.zeros(self.valid.shape, dtype=dtype, device=self.valid.device)
            padding = padding.masked_fill(~self.valid, float('-inf'))[:, None, None, :]
            bias = padding if bias is None else bias + padding
        return bias

    def remember(self, x: torch.Tensor) -> None:
        """Store the current features of every patch still carried (for token recovery)."""
        if self.recovered is None:
            return
        alive = self.source >= 0
        current = gather_tokens(x, self.source.clamp(min=0))
        self.recovered = torch.where(alive[..., None], current, self.recovered)

    def keep_rows(self, x: torch.Tensor, rows: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Keep the prefix and the given non-prefix ``rows`` ``[B, K]`` (in that order); update the bookkeeping.

        Args:
            valid: ``[B, K]`` bool, ``False`` where ``rows`` is padding (variable counts per image).
        """
        self.remember(x)
        batch, tokens, _ = x.shape
        prefix = torch.arange(self.num_prefix, device=x.device).expand(batch, -1)
        index = torch.cat([prefix, rows], dim=1)
        if valid is not None:
            valid = torch.cat([torch.ones_like(prefix, dtype=torch.bool), valid], dim=1)
            if self.valid is not None:
                valid = valid & self.valid.gather(1, index)
        elif self.valid is not None:
            valid = self.valid.gather(1, index)
        self._move(index, tokens, valid)
        return gather_tokens(x, index)

    def append_rows(self, count: int) -> None:
        """``count`` new tokens were appended (e.g. EViT's fused token): real, size 1, no importance yet."""
        for name, fill in (('valid', True), ('sizes', 1.0), ('importance', 0.0)):
            value = getattr(self, name)
            if value is not None:
                extra = torch.full((value.shape[0], count), fill, dtype=value.dtype, device=value.device)
                setattr(self, name, torch.cat([value, extra], dim=1))

    def merge_rows(self, x: torch.Tensor, slots: torch.Tensor, num_slots: int) -> torch.Tensor:
        """Merge rows into ``num_slots`` by ``slots`` ``[B, N]`` (size-weighted means); update the bookkeeping."""
        self.remember(x)
        merged, self.sizes = merge_tokens(x, self.sizes, slots, num_slots)
        self.source = torch.where(self.source >= 0, slots.gather(1, self.source.clamp(min=0)), self.source)
        self.history.append(self.source)
        return merged

    def _move(self, index: torch.Tensor, tokens: torch.Tensor, valid: Optional[torch.Tensor]) -> None:
        """Rows ``index`` ``[B, K]`` of the old sequence become rows ``0..K-1``; others are dropped."""
        batch, kept = index.shape
        position = torch.full((batch, tokens), -1, dtype=torch.long, device=index.device)
        new_rows = torch.arange(kept, device=index.device).expand(batch, -1)
        if valid is not None:
            new_rows = new_rows.masked_fill(~valid, -1)
        position.scatter_(1, index, new_rows)
        self.source = torch.where(self.source >= 0, position.gather(1, self.source.clamp(min=0)), self.source)
        for name in ('sizes', 'importance'):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.gather(1, index))
        self.valid = valid
        self.history.append(self.source)
