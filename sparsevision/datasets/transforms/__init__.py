"""Per-sample transforms (registered in TRANSFORMS)."""
from .image import LoadImageFromFile, RandomAffine, RandomHorizontalFlip, RandomResizedCrop, ResizeImage
from .formatting import PackClassificationInputs, PackPointCloudInputs
from .point_cloud import (ObjectRangeFilter, PointSample, PointsRangeFilter, RandomFlip, RandomJitter, RandomRotation,
                          RandomScale, SelectPointColumns, Voxelize)

__all__ = ['LoadImageFromFile', 'ObjectRangeFilter', 'PackClassificationInputs', 'PackPointCloudInputs',
           'PointSample', 'PointsRangeFilter', 'RandomAffine', 'RandomFlip', 'RandomHorizontalFlip', 'RandomJitter',
           'RandomResizedCrop', 'RandomRotation', 'RandomScale', 'ResizeImage', 'SelectPointColumns', 'Voxelize']
