"""Using sparsevision's backbones from other 3D detection frameworks (mmdet3d configs need nothing: see
docs/integration.md)."""
from .openpcdet import OpenPCDetBackbone3D

__all__ = ['OpenPCDetBackbone3D']
