"""Everything buildable from a config: backbones, necks, heads and whole models (registered in MODELS)."""
from . import backbones, classifiers, heads, masked_pretraining, necks, spiking, token_pruning  # noqa: F401  (registration)
