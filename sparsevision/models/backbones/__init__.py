from .nat import NAT
from .resnet import ResNet
from .second import SparseEncoder
from .sparse_resnet import SparseResNet
from .sparse_unet import SparseUNet
from .timm_backbone import TimmBackbone
from .vision_transformer import VisionTransformer

__all__ = ['NAT', 'ResNet', 'SparseEncoder', 'SparseResNet', 'SparseUNet', 'TimmBackbone', 'VisionTransformer']
