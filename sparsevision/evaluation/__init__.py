"""Metrics (registered in METRICS)."""
from .accuracy import Accuracy

__all__ = ['Accuracy']
