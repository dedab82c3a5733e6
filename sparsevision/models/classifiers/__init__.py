from .image_classifier import ImageClassifier
from .token_pruning_classifier import TokenPruningClassifier

__all__ = ['ImageClassifier', 'TokenPruningClassifier']
