"""DynamicViT: a light predictor scores tokens; Gumbel-masked attention in training, real pruning in inference."""
import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ...registry import MODELS
from .router import TokenRouter, check_keep_rate
from .state import TokenState


class KeepPredictor(nn.Module):
    """Scores tokens from their own features and the keep-weighted mean of all: ``[B, N, 2]`` log-probs (keep, drop).

    ``keep_prior`` offsets the logits so that an untrained predictor keeps that fraction (a fixed offset, not a
    bias: weight initialisation cannot undo it); training then starts at the token counts the ratio loss asks for.
    """

    def __init__(self, dim: int, keep_prior: float = 0.5):
        super().__init__()
        if dim % 4:
            raise ValueError(f'DynamicViT predictors need an embedding width divisible by 4, got {dim}')
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                   nn.Linear(dim // 4, 2))
        prior = torch.tensor([keep_prior, 1 - keep_prior]).clamp(min=1e-3).log()
        self.register_buffer('prior_logits', prior, persistent=False)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        local, context = self.embed(tokens).chunk(2, dim=-1)
        weights = keep[..., None].to(context.dtype)
        context = (context * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
        logits = self.score(torch.cat([local, context.expand_as(local)], dim=-1))
        return F.log_softmax(logits + self.prior_logits.to(logits.dtype), dim=-1)


@MODELS.register_module()
class DynamicViTRouter(TokenRouter):
    """DynamicViT (Rao et al., NeurIPS 2021, https://arxiv.org/abs/2106.02034), written from the paper.

    Before each block in ``locations`` a :class:`KeepPredictor` scores the patch tokens. Training keeps
    every token but draws hard keep decisions with a straight-through Gumbel-softmax and masks dropped
    tokens out of all later attention; inference keeps the ``floor(keep_rate ** (s + 1) * N0)`` best-scored
    tokens at stage ``s`` of ``N0`` patches, as the paper does (the sequence really shrinks). The keep-ratio
    loss pulls stage ``s``'s kept fraction towards ``keep_rate ** (s + 1)``; the distillation from a dense
    teacher lives in :class:`~sparsevision.models.TokenPruningClassifier`.

    Args:
        keep_rate: fraction kept at each location, in (0, 1].
        locations: blocks before which tokens are pruned.
        ratio_weight: weight of the keep-ratio loss.
    """

    def __init__(self, keep_rate: float = 0.7, locations: Sequence[int] = (3, 6, 9), ratio_weight: float = 2.0):
        super().__init__(locations)
        self.keep_rate = check_keep_rate(keep_rate)
        self.ratio_weight = ratio_weight
        self.predictors = nn.ModuleList()

    @property
    def reduces(self) -> bool:
        return bool(self.locations) and self.keep_rate < 1

    def bind(self, depth: int, embed_dim: int, num_prefix: int, num_patches: int) -> None:
        super().bind(depth, embed_dim, num_prefix, num_patches)
        self.num_patches = num_patches
        if len(self.predictors) != len(self.locations):
            self.predictors = nn.ModuleList(KeepPredictor(embed_dim, self.keep_rate) for _ in self.locations)

    def before_block(self, x: torch.Tensor, state: TokenState, index: int) -> torch.Tensor:
        if index not in self.locations or (self.keep_rate == 1 and not self.training):
            return x
        stage = self.locations.index(index)
        predictor = self.predictors[stage]
        prefix = state.num_prefix
        patches = x[:, prefix:]
        if not self.training:
            log_probs = predictor(patches, torch.ones(patches.shape[:2], device=x.device))
            kept = max(1, math.floor(self.keep_rate ** (stage + 1) * self.num_patches + 1e-9))
            rows = ops.select_tokens(log_probs[..., 0], min(kept, patches.shape[1]))
            return state.keep_rows(x, rows + prefix)
        previous = (state.keep[:, prefix:] if state.keep is not None
                    else torch.ones(patches.shape[:2], dtype=x.dtype, device=x.device))
        decision = F.gumbel_softmax(predictor(patches, previous), hard=True)[..., 0] * previous
        state.keep = torch.cat([torch.ones_like(x[:, :prefix, 0]), decision], dim=1)
        state.keep_ratios.append(decision.mean(dim=1))
        return x

    def losses(self, state: TokenState) -> Dict[str, torch.Tensor]:
        if not state.keep_ratios:
            return {}
        errors = [(ratio - self.keep_rate ** (stage + 1)).pow(2).mean()
                  for stage, ratio in enumerate(state.keep_ratios)]
        return {'loss_keep_ratio': self.ratio_weight * torch.stack(errors).mean()}
