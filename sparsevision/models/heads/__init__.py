from .center_head import CenterHead
from .classification_head import ClassificationHead

__all__ = ['CenterHead', 'ClassificationHead']
