"""Metrics (registered in METRICS)."""
from .accuracy import Accuracy
from .detection import DetectionAP
from .segmentation import MeanIoU

__all__ = ['Accuracy', 'DetectionAP', 'MeanIoU']
