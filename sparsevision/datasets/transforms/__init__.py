"""Per-sample transforms (registered in TRANSFORMS)."""
from .image import LoadImageFromFile, RandomAffine, RandomHorizontalFlip, RandomResizedCrop, ResizeImage
from .formatting import PackClassificationInputs

__all__ = ['LoadImageFromFile', 'PackClassificationInputs', 'RandomAffine', 'RandomHorizontalFlip', 'RandomResizedCrop',
           'ResizeImage']
