"""Metrics (registered in METRICS)."""
from .accuracy import Accuracy
from .segmentation import MeanIoU

__all__ = ['Accuracy', 'MeanIoU']
