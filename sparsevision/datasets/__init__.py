"""Datasets (registered in DATASETS) and their transforms (TRANSFORMS)."""
from . import transforms  # noqa: F401  (registration)
from .digits import DigitsDataset
from .photo_crops import PhotoCropsDataset

__all__ = ['DigitsDataset', 'PhotoCropsDataset']
