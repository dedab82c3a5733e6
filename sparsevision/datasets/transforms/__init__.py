"""Per-sample transforms (registered in TRANSFORMS)."""
from .image import LoadImageFromFile, RandomAffine, ResizeImage
from .formatting import PackClassificationInputs

__all__ = ['LoadImageFromFile', 'PackClassificationInputs', 'RandomAffine', 'ResizeImage']
