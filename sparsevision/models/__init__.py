"""Everything buildable from a config: backbones, necks, heads and whole models (registered in MODELS)."""
from . import backbones, classifiers, heads, necks  # noqa: F401  (registration)
