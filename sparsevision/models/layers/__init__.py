"""Shared building blocks: sparse and bird's-eye-view blocks, neighbourhood and routing attention, and packed linear
layers for CPU inference."""
from .dense_blocks import conv2d_norm_act
from .neighborhood_attention import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .packed_linear import PackedLinear, pack_linear_layers, packed_linear_available
from .routing_attention import BiLevelRoutingAttention
from .sparse_blocks import SparseBasicBlock, build_sparse_norm, conv_norm_act

__all__ = ['BiLevelRoutingAttention', 'NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D',
           'PackedLinear', 'SparseBasicBlock', 'build_sparse_norm', 'conv2d_norm_act', 'conv_norm_act',
           'pack_linear_layers', 'packed_linear_available']
