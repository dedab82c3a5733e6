"""Analytic multiply-accumulates (MACs) of a dense or token-pruning timm ViT, from the token counts of one forward.

Counted per image, for a block whose attention sees ``N`` tokens and whose MLP sees ``N'`` (fewer when the
block reduces tokens between its attention and its MLP), with width ``C``, MLP hidden width ``H`` and
``P`` non-prefix tokens:

- patch embedding: ``patches * C * in_chans * patch_area``;
- qkv ``3 N C^2``; attention ``2 N^2 C`` (``Q K^T`` and ``A V``; ``C`` counts only the heads computed, fewer
  after SpAtten's head pruning); projection ``N C^2``; MLP ``2 N' C H``;
- the method's own work: EViT the CLS query's attention row, ``N C`` per pruning block; ToMe the bipartite
  similarity ``|A| |B| head_dim`` (about ``(P/2)^2 head_dim``) per merging block; DynamicViT its predictor MLP
  on the ``P`` patches scored at each location; SpAtten nothing (it sums attention it already has);
- the head: one pooled token through the classifier.

Layer widths are read from the modules (``3 C^2`` is ``qkv.weight.numel()``, ``2 C H`` the MLP's linear
weights), so gated-MLP or gated-attention variants are counted too. Normalisations, softmax, biases, top-k,
gathers and merges are not counted, as in the papers' FLOPs figures.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .dynamic_vit import DynamicViTRouter
from .evit import EViTRouter
from .tome import ToMeRouter


def linear_weights(module: nn.Module) -> int:
    """Weight entries of every ``nn.Linear`` in ``module``: the MACs per token passing through it."""
    return sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, nn.Linear))


def _record_tokens(module: nn.Module, counts: List[int]):
    """Hook appending the sequence length of ``module``'s first input ``[B, N, C]`` to ``counts``."""
    return module.register_forward_hook(lambda _module, inputs, _output: counts.append(inputs[0].shape[1]))


def _router_macs(model: nn.Module, index: int, tokens: int, predictor_tokens: Dict[int, int]) -> int:
    """MACs of the token-reduction method itself at block ``index`` (attention over ``tokens`` tokens)."""
    router = getattr(model, 'router', None)
    attention = model.blocks[index].attn
    patches = tokens - model.num_prefix_tokens
    if isinstance(router, EViTRouter) and router.prunes(index):
        return tokens * attention.num_heads * attention.head_dim
    if isinstance(router, ToMeRouter) and router.schedule[index] > 0:
        return (patches + 1) // 2 * (patches // 2) * attention.head_dim
    if isinstance(router, DynamicViTRouter) and index in predictor_tokens:
        predictor = router.predictors[router.locations.index(index)]
        return predictor_tokens[index] * linear_weights(predictor)
    return 0


def vit_macs(model: nn.Module, image_size: Optional[Sequence[int]] = None,
             batch_images: Optional[torch.Tensor] = None) -> dict:
    """MACs per image of a timm ``VisionTransformer`` or a token-pruning copy of one (``from_timm``).

    Runs one inference forward (eval mode, no grad; the model's mode is restored) on ``batch_images`` or on
    one zero image, recording how many tokens enter each block's attention and MLP. Where images keep
    different counts (EViT ``keep_mass``) the padded length is counted, since that is what is computed.

    Args:
        model: the ViT.
        image_size: ``(height, width)`` of the zero image; the model's own size by default.
        batch_images: ``[B, C, H, W]`` images to route (data-dependent counts); overrides ``image_size``.

    Returns:
        ``dict(patch_embed=..., per_block=[...], head=..., total=...)``; each ``per_block`` entry holds
        ``tokens`` (into the attention), ``mlp_tokens``, and the MACs ``qkv``, ``attention``, ``projection``,
        ``mlp``, ``router`` and ``total`` of that block.
    """
    if batch_images is None:
        height, width = image_size or model.patch_embed.img_size
        batch_images = torch.zeros(1, model.patch_embed.proj.in_channels, height, width,
                                   device=model.patch_embed.proj.weight.device)
    attention_tokens, mlp_tokens, predictor_counts = [], [], []
    hooks = []
    for block in model.blocks:
        hooks.append(_record_tokens(block.attn.qkv, attention_tokens))
        hooks.append(_record_tokens(block.mlp, mlp_tokens))
    router = getattr(model, 'router', None)
    if isinstance(router, DynamicViTRouter):
        hooks.extend(_record_tokens(predictor, predictor_counts) for predictor in router.predictors)
    was_training = model.training
    model.eval()
    heads_per_block = None
    try:
        with torch.no_grad():
            if hasattr(model, 'forward_with_state'):
                heads_per_block = model.forward_with_state(batch_images)[1].heads_per_block
            else:
                model(batch_images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    # predictors run in location order, and only where DynamicViT prunes
    predictor_tokens = dict(zip(router.locations, predictor_counts)) if predictor_counts else {}

    per_block = []
    for index, (block, tokens, tokens_after) in enumerate(zip(model.blocks, attention_tokens, mlp_tokens, strict=True)):
        attention = block.attn
        heads = attention.num_heads if heads_per_block is None else heads_per_block[index]
        attention_width = heads * attention.head_dim
        gate = attention.gate.weight.numel() if getattr(attention, 'gate', None) is not None else 0
        entry = dict(tokens=tokens, mlp_tokens=tokens_after,
                     qkv=tokens * attention.qkv.weight.numel(),
                     attention=2 * tokens * tokens * attention_width,
                     projection=tokens * (attention.proj.weight.numel() + gate),
                     mlp=tokens_after * linear_weights(block.mlp),
                     router=_router_macs(model, index, tokens, predictor_tokens))
        entry['total'] = sum(entry[name] for name in ('qkv', 'attention', 'projection', 'mlp', 'router'))
        per_block.append(entry)

    patch_embed = model.patch_embed.num_patches * model.patch_embed.proj.weight.numel()
    head = model.head.weight.numel() if isinstance(model.head, nn.Linear) else 0
    total = patch_embed + sum(entry['total'] for entry in per_block) + head
    return dict(patch_embed=patch_embed, per_block=per_block, head=head, total=total)
