"""timm's VisionTransformer, registered in the sparsevision zoo."""
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from ...registry import MODELS


@MODELS.register_module()
class VisionTransformer(TimmVisionTransformer):
    """ViT (Dosovitskiy et al., 2021, https://arxiv.org/abs/2010.11929) exactly as timm builds it.

    A subclass that adds nothing to the module tree, so timm ``VisionTransformer``
    and DeiT state_dicts load unchanged and give timm's outputs. It takes every
    timm constructor argument (LayerScale ``init_values``, ``qk_norm``,
    ``reg_tokens``, ...) and ``forward`` returns what timm returns: logits when
    ``num_classes > 0``, else pooled features. It is the dense baseline of the
    token-pruning models.
    """
