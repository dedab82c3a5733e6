from .resnet import ResNet
from .vision_transformer import VisionTransformer

__all__ = ['ResNet', 'VisionTransformer']
