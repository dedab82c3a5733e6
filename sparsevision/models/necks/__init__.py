from .bev_neck import BEVNeck
from .global_average_pooling import GlobalAveragePooling

__all__ = ['BEVNeck', 'GlobalAveragePooling']
