"""Everything buildable from a config: backbones, necks, heads and whole models (registered in MODELS)."""
from . import (backbones, classifiers, data_preprocessors, detectors, heads, masked_pretraining, necks,  # noqa: F401
               segmentors, spiking, token_pruning)  # (imported to register their models)
