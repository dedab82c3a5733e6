"""Everything buildable from a config: backbones, necks, heads and whole models (registered in MODELS)."""
from . import backbones, classifiers, data_preprocessors, heads, masked_pretraining, necks, spiking, token_pruning  # noqa: F401  (registration)
