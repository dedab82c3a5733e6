"""TokenPruningViT: a timm ViT whose blocks reduce their tokens through a router (EViT, DynamicViT, ToMe, SpAtten)."""
import copy
from typing import Dict, Optional, Tuple, Type, Union

import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from ...registry import MODELS
from ..backbones.vision_transformer import VisionTransformer
from ..layers.packed_linear import pack_linear_layers, packed_linear_available
from .router import TokenRouter, run_block
from .state import TokenState

SUPPORTED = ('timm VisionTransformer models built from timm Block + Attention: ViT, DeiT (also distilled), '
             'DeiT III / LayerScale, qk-norm and register-token variants, with class-token or average pooling')
METHOD_NAMES = {'evit': 'EViTRouter', 'dynamicvit': 'DynamicViTRouter', 'tome': 'ToMeRouter',
                'spatten': 'SpAttenRouter'}
OUT_TYPES = ('logits', 'featmap')


class TokenPruningMixin:
    """Token routing for a timm ``VisionTransformer`` subclass; adds no modules but the router.

    ``forward`` returns what timm returns (``out_type='logits'``) or, with ``out_type='featmap'``, the full
    ``[B, C, H, W]`` patch grid after the final norm: every patch takes the features of the token that
    carries it now (a merged token's for merged patches) or, once dropped, its last features (token recovery).
    """

    router: TokenRouter
    out_type: str

    def attach_router(self, method: Union[dict, TokenRouter], out_type: str = 'logits',
                      pack_linear: Optional[bool] = None) -> None:
        """Route this model's tokens with ``method`` (see :class:`TokenPruningViT` for the arguments)."""
        check_supported(self)
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type must be one of {OUT_TYPES}, got {out_type!r}')
        router = MODELS.build(method) if isinstance(method, dict) else method
        if not isinstance(router, TokenRouter):
            raise ValueError(f'method must build a TokenRouter (EViTRouter, DynamicViTRouter, ToMeRouter, '
                             f'SpAttenRouter), got {type(router).__name__}')
        router.bind(depth=len(self.blocks), embed_dim=self.embed_dim, num_prefix=self.num_prefix_tokens,
                    num_patches=self.patch_embed.num_patches)
        self.router = router
        self.out_type = out_type
        if (router.reduces if pack_linear is None else pack_linear) and packed_linear_available():
            pack_linear_layers(self)

    def forward_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, TokenState]:
        """Final-norm tokens ``[B, N', C]`` and the routing state of this forward."""
        expected = tuple(self.patch_embed.img_size)
        if images.dim() != 4 or tuple(images.shape[-2:]) != expected:
            patch = tuple(self.patch_embed.patch_size)
            raise ValueError(f'{type(self).__name__} expects [B, C, {expected[0]}, {expected[1]}] images (a '
                             f'multiple of the {patch} patch size, fixed by the position embedding); got '
                             f'{tuple(images.shape)}: resize or pad the input')
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        state = TokenState.start(x, self.num_prefix_tokens, track_features=self.out_type == 'featmap')
        self.router.start(state, x)
        for index, block in enumerate(self.blocks):
            x = run_block(block, x, self.router, state, index)
        return self.norm(x), state

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError('token-pruning ViTs build their own attention masks; attn_mask/is_causal are not '
                             'supported')
        return self.forward_tokens(x)[0]

    def forward_with_state(self, images: torch.Tensor):
        """``(output, state)``: the output as :meth:`forward` gives it, plus what the router did."""
        tokens, state = self.forward_tokens(images)
        return self.output(tokens, state), state

    def output(self, tokens: torch.Tensor, state: TokenState) -> torch.Tensor:
        """What :meth:`forward` returns for the final tokens of :meth:`forward_tokens`."""
        return self.feature_map(tokens, state) if self.out_type == 'featmap' else self.head_output(tokens, state)

    def forward(self, images: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError('token-pruning ViTs build their own attention masks; attn_mask/is_causal are not '
                             'supported')
        return self.forward_with_state(images)[0]

    def head_output(self, tokens: torch.Tensor, state: TokenState) -> torch.Tensor:
        """timm's head; average pooling weights each token by the patches it carries and skips padding."""
        if self.global_pool != 'avg' or (state.sizes is None and state.valid is None):
            return self.forward_head(tokens)
        patches = tokens[:, self.num_prefix_tokens:]
        weights = torch.ones(patches.shape[:2], dtype=patches.dtype, device=patches.device)
        if state.sizes is not None:
            weights = weights * state.sizes[:, self.num_prefix_tokens:]
        if state.valid is not None:
            weights = weights * state.valid[:, self.num_prefix_tokens:]
        pooled = (patches * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        return self.head(self.head_drop(self.fc_norm(pooled)))

    def feature_map(self, tokens: torch.Tensor, state: TokenState) -> torch.Tensor:
        state.remember(tokens)
        height, width = self.patch_embed.grid_size
        return state.recovered.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def load_dense_weights(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load a dense timm/DeiT state_dict; only the router's own parameters may be missing.

        Raises:
            ValueError: when keys or shapes do not match (a checkpoint of another architecture).
        """
        expected = self.state_dict()
        missing = sorted(key for key in expected.keys() - state_dict.keys() if not key.startswith('router.'))
        unexpected = sorted(state_dict.keys() - expected.keys())
        mismatched = sorted(key for key in expected.keys() & state_dict.keys()
                            if expected[key].shape != state_dict[key].shape)
        if missing or unexpected or mismatched:
            details = '; '.join(f'{label}: {keys[:5]}{" ..." if len(keys) > 5 else ""}' for label, keys in
                                (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched))
                                if keys)
            raise ValueError(f'this state_dict does not fit {type(self).__name__} (another architecture?): {details}')
        self.load_state_dict(state_dict, strict=False)


@MODELS.register_module()
class TokenPruningViT(TokenPruningMixin, VisionTransformer):
    """A timm ViT with token reduction (see :class:`TokenPruningMixin`), built from a config.

    Args:
        method: router config, e.g. ``dict(type='EViTRouter', keep_rate=0.7, locations=(3, 6, 9))``.
        out_type: ``'logits'`` (timm's output) or ``'featmap'`` (recovered ``[B, C, H, W]`` patch grid).
        pack_linear: run the linear layers with oneDNN-packed weights in CPU float32 inference (eval mode, no
            autograd; :func:`~sparsevision.models.layers.pack_linear_layers`): faster, outputs within float32
            rounding of the plain layers, training unchanged. ``None`` (default): pack when the router reduces
            tokens at inference, so that with pruning off the model stays timm's, bitwise. Ignored without oneDNN.
        **kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``, ``embed_dim``, ...).
    """

    def __init__(self, method: Optional[dict] = None, out_type: str = 'logits', pack_linear: Optional[bool] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.attach_router(method or dict(type='EViTRouter'), out_type, pack_linear)


_PRUNING_CLASSES: Dict[type, type] = {}


def pruning_class(cls: Type[nn.Module]) -> type:
    """``cls`` with :class:`TokenPruningMixin` in front (e.g. ``TokenPruningVisionTransformerDistilled``)."""
    if issubclass(cls, TokenPruningMixin):
        return cls
    if cls not in _PRUNING_CLASSES:
        _PRUNING_CLASSES[cls] = type(f'TokenPruning{cls.__name__}', (TokenPruningMixin, cls), {'__module__': __name__})
    return _PRUNING_CLASSES[cls]


def check_supported(model: nn.Module) -> None:
    """Raise ValueError, naming what is supported, for models this family cannot route."""
    problem = None
    if not isinstance(model, TimmVisionTransformer):
        problem = f'{type(model).__name__} is not a timm VisionTransformer'
    elif any(type(block) is not Block or not isinstance(block.attn, Attention) for block in model.blocks):
        kinds = sorted({f'{type(block).__name__}/{type(getattr(block, "attn", None)).__name__}'
                        for block in model.blocks})
        problem = f'its blocks are {kinds}, not timm Block/Attention'
    elif getattr(model.patch_embed, 'dynamic_img_size', False):
        problem = 'dynamic_img_size is not supported'
    elif model.global_pool not in ('token', 'avg') or getattr(model, 'attn_pool', None) is not None:
        problem = f"global_pool={model.global_pool!r} (only 'token' and 'avg' are supported)"
    if problem:
        raise ValueError(f'cannot prune tokens of this model: {problem}. Supported: {SUPPORTED}.')


def from_timm(model: Union[str, nn.Module], method: Union[str, dict] = 'evit', out_type: str = 'logits', *,
              pretrained: bool = False, pretrained_cfg_overlay: Optional[dict] = None,
              checkpoint_path: Optional[str] = None, pack_linear: Optional[bool] = None, **router_args) -> nn.Module:
    """A token-pruning copy of a timm ViT (weights shared by value, the original untouched).

    Args:
        model: a timm model, or a timm model name.
        method: ``'evit'``, ``'dynamicvit'``, ``'tome'``, ``'spatten'``, a router class name, or a router config.
        out_type: ``'logits'`` or ``'featmap'``.
        pretrained, pretrained_cfg_overlay, checkpoint_path: passed to ``timm.create_model`` with a model name:
            ``pretrained=True`` loads timm's weights (downloaded, or from a local file with
            ``pretrained_cfg_overlay=dict(file=PATH)``); ``checkpoint_path`` loads a checkpoint after building.
        pack_linear: oneDNN-packed linear layers for CPU float32 inference; ``None`` (default): when the router
            reduces tokens (see :class:`TokenPruningViT`).
        **router_args: router arguments (``keep_rate``, ``locations``, ``r``, ...).

    Raises:
        ValueError: timm loading options given with a model instance (load its weights before calling this).

    Example:
        >>> model = from_timm('deit_small_patch16_224', 'evit', pretrained=True, keep_rate=0.7)
    """
    timm_args = dict(pretrained=pretrained, pretrained_cfg_overlay=pretrained_cfg_overlay,
                     checkpoint_path=checkpoint_path)
    if isinstance(model, str):
        model = timm.create_model(model, **timm_args)
    elif any(timm_args.values()):
        given = sorted(name for name, value in timm_args.items() if value)
        raise ValueError(f'{", ".join(given)} apply to timm model names; this {type(model).__name__} is already '
                         'built: load its weights first, or pass its timm name instead')
    check_supported(model)
    if isinstance(method, str):
        method = dict(type=METHOD_NAMES.get(method.lower(), method))
    pruned = copy.deepcopy(model)
    pruned.__class__ = pruning_class(type(model))
    pruned.attach_router(dict(method, **router_args), out_type, pack_linear)
    return pruned
