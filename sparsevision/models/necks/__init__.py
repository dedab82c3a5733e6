from .global_average_pooling import GlobalAveragePooling

__all__ = ['GlobalAveragePooling']
