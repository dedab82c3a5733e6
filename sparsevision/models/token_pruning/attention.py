"""timm self-attention, recomputed with what token routers need from it.

:func:`attend` does exactly what ``timm.layers.Attention.forward`` does
(qk-norm, scale-norm, gate, fused SDPA when timm uses it) and can also return
the CLS query's attention row, the keys, or the attention each token receives.
The CLS row is recomputed from one query, so the fused kernel stays in use.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionResult:
    """Output of :func:`attend`: ``output`` (after the projection) plus what was asked for."""

    output: torch.Tensor
    cls_attention: Optional[torch.Tensor] = None   # [B, N]: query 0's attention, mean over heads
    keys: Optional[torch.Tensor] = None            # [B, N, head_dim]: keys, mean over heads (ToMe's metric)
    received: Optional[torch.Tensor] = None        # [B, N]: attention each key receives, summed over heads/queries
    head_importance: Optional[torch.Tensor] = None  # [B, heads]: L1 norm of each head's output (0 if skipped)


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Softmax over the keys with ``keep`` ``[B, N]`` in ``[0, 1]`` (DynamicViT's attention masking).

    Every query still attends to itself, so dropped tokens keep a defined value; the weights are
    differentiable with respect to ``keep`` (Gumbel straight-through training).
    """
    tokens = logits.shape[-1]
    eye = torch.eye(tokens, dtype=logits.dtype, device=logits.device)
    weights = keep[:, None, None, :].to(logits.dtype) * (1 - eye) + eye
    exponentials = (logits.float() - logits.float().amax(dim=-1, keepdim=True)).exp() * weights
    return ((exponentials + eps / tokens) / (exponentials.sum(dim=-1, keepdim=True) + eps)).to(logits.dtype)


def attend(attention: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None,
           keep: Optional[torch.Tensor] = None, heads: Optional[torch.Tensor] = None, cls_attention: bool = False,
           keys: bool = False, received: bool = False, head_importance: bool = False) -> AttentionResult:
    """Run a timm ``Attention`` module on ``x`` ``[B, N, C]``.

    Args:
        attention: the block's ``attn`` module.
        x: normalised tokens.
        bias: additive attention bias broadcastable to ``[B, heads, N, N]`` (proportional attention, padding).
        keep: ``[B, N]`` soft keep mask for :func:`masked_softmax` (training-time pruning).
        heads: ``[B, H']`` heads each sample still computes (head pruning); the others output zeros.
        cls_attention, keys, received, head_importance: what to return besides the output.
    """
    batch, tokens, _ = x.shape
    gate = attention.gate(x).sigmoid() if getattr(attention, 'gate', None) is not None else None
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    if heads is not None:
        q, k, v = (select_heads(part, heads) for part in (q, k, v))
        if bias is not None and bias.dim() == 4 and bias.shape[1] > 1:
            bias = select_heads(bias.expand(batch, -1, -1, -1), heads)
    result = AttentionResult(output=x)
    if attention.fused_attn and keep is None and not received:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=attention.attn_drop.p if attention.training else 0.0)
        if cls_attention:
            row = (q[:, :, :1] * attention.scale) @ k.transpose(-2, -1)
            if bias is not None:
                row = row + bias[..., :1, :]
            result.cls_attention = row.softmax(dim=-1)[:, :, 0].mean(dim=1)
    else:
        logits = (q * attention.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probabilities = masked_softmax(logits, keep) if keep is not None else logits.softmax(dim=-1)
        if cls_attention:
            result.cls_attention = probabilities[:, :, 0].mean(dim=1)
        if received:
            result.received = probabilities.sum(dim=(1, 2))
        y = attention.attn_drop(probabilities) @ v
    if keys:
        result.keys = k.mean(dim=1)
    if heads is not None:
        y = torch.zeros(batch, attention.num_heads, *y.shape[2:], dtype=y.dtype, device=y.device).scatter(
            1, heads[:, :, None, None].expand_as(y), y)
    if head_importance:
        result.head_importance = y.detach().abs().sum(dim=(2, 3), dtype=torch.float32)
    y = attention.norm(y.transpose(1, 2).reshape(batch, tokens, attention.attn_dim))
    if gate is not None:
        y = y * gate
    result.output = attention.proj_drop(attention.proj(y))
    return result


def select_heads(tensor: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """``tensor[b, heads[b]]`` for ``[B, heads, ...]`` tensors: the heads each sample computes."""
    return tensor.gather(1, heads.view(*heads.shape, *[1] * (tensor.dim() - 2)).expand(-1, -1, *tensor.shape[2:]))
