"""Token-pruning ViTs on timm weights: one routed ViT, four methods (EViT, DynamicViT, ToMe, SpAtten)."""
from .dynamic_vit import DynamicViTRouter, KeepPredictor
from .evit import EViTRouter
from .router import TokenRouter
from .spatten import SpAttenRouter
from .state import TokenState
from .tome import ToMeRouter, bipartite_merge_slots
from .vision_transformer import TokenPruningMixin, TokenPruningViT, check_supported, from_timm

__all__ = ['DynamicViTRouter', 'EViTRouter', 'KeepPredictor', 'SpAttenRouter', 'ToMeRouter', 'TokenPruningMixin',
           'TokenPruningViT', 'TokenRouter', 'TokenState', 'bipartite_merge_slots', 'check_supported', 'from_timm']
