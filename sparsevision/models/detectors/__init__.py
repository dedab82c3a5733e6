"""3D object detectors."""
from .centerpoint import CenterPoint

__all__ = ['CenterPoint']
