"""Shared building blocks of the sparse backbones and the bird's-eye-view neck and heads."""
from .dense_blocks import conv2d_norm_act
from .sparse_blocks import SparseBasicBlock, build_sparse_norm, conv_norm_act

__all__ = ['SparseBasicBlock', 'build_sparse_norm', 'conv2d_norm_act', 'conv_norm_act']
