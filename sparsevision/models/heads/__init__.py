from .classification_head import ClassificationHead

__all__ = ['ClassificationHead']
