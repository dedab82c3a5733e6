"""Datasets (registered in DATASETS) and their transforms (TRANSFORMS)."""
from . import transforms  # noqa: F401  (registration)
from .digits import DigitsDataset
from .event_digits import EventDigitsDataset
from .photo_crops import PhotoCropsDataset
from .shapes import ShapeClassificationDataset, ShapeSceneSegmentationDataset

__all__ = ['DigitsDataset', 'EventDigitsDataset', 'PhotoCropsDataset', 'ShapeClassificationDataset',
           'ShapeSceneSegmentationDataset']
