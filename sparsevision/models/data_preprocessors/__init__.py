"""Data preprocessors that turn collated samples into model inputs (registered in MODELS)."""
from .sparse_data_preprocessor import SparseDataPreprocessor

__all__ = ['SparseDataPreprocessor']
