from .resnet import ResNet
from .timm_backbone import TimmBackbone
from .vision_transformer import VisionTransformer

__all__ = ['ResNet', 'TimmBackbone', 'VisionTransformer']
