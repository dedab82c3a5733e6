"""Per-sample transforms (registered in TRANSFORMS)."""
from .image import LoadImageFromFile, RandomAffine, RandomHorizontalFlip, RandomResizedCrop, ResizeImage
from .formatting import PackClassificationInputs, PackPointCloudInputs

__all__ = ['LoadImageFromFile', 'PackClassificationInputs', 'PackPointCloudInputs', 'RandomAffine',
           'RandomHorizontalFlip', 'RandomResizedCrop', 'ResizeImage']
