"""Segmentation models (registered in MODELS)."""
from .sparse_segmentor import SparseSegmentor

__all__ = ['SparseSegmentor']
