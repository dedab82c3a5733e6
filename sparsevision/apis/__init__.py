"""Inferencers used by demo/ and by users: load a model and checkpoint, run, visualise."""
from .image_classification import ImageClassificationInferencer

__all__ = ['ImageClassificationInferencer']
