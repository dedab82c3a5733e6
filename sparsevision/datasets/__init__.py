"""Datasets (registered in DATASETS) and their transforms (TRANSFORMS)."""
from . import transforms  # noqa: F401  (registration)
from .digits import DigitsDataset

__all__ = ['DigitsDataset']
