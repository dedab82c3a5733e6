"""Sparse tensors and layers, a drop-in for ``spconv.pytorch``.

``import sparsevision.sparse as spconv`` runs code written for spconv 2.x:
the same class names, arguments, ``indices`` layout ``(batch, z, y, x)`` and
weight layout ``[out, *kernel, in / groups]``, so spconv state_dicts load
unchanged. On top: deterministic results at any thread count, ``groups``,
automatic kernel-map reuse, bf16/fp16, and ops that ``torch.compile`` traces.
"""
from .attention import SubMAttention, SubMAttention3d
from .conv import (SparseConv1d, SparseConv2d, SparseConv3d, SparseConv4d, SparseConvolution, SparseInverseConv1d,
                   SparseInverseConv2d, SparseInverseConv3d, SparseInverseConv4d, SubMConv1d, SubMConv2d, SubMConv3d,
                   SubMConv4d)
from . import kernel_maps
from .interop import (convert_spconv1_state_dict, from_spconv, to_spconv, weight_from_minkowski,
                      weight_from_spconv1, weight_to_minkowski, weight_to_spconv1)
from .modules import SparseIdentity, SparseModule, SparseReLU, SparseSequential, ToDense
from .norm import SparseBatchNorm, SparseGroupNorm
from .pool import (SparseAvgPool1d, SparseAvgPool2d, SparseAvgPool3d, SparseAvgPool4d, SparseGlobalAvgPool,
                   SparseGlobalMaxPool, SparseMaxPool1d, SparseMaxPool2d, SparseMaxPool3d, SparseMaxPool4d,
                   SparsePool)
from .tensor import KernelMap, SparseConvTensor, SparseTensor
from .voxelize import VoxelBatch, devoxelize, grid_shape, voxelize_batch, voxelize_hard, voxelize_mean

__all__ = [
    'KernelMap', 'SparseAvgPool1d', 'SparseAvgPool2d', 'SparseAvgPool3d', 'SparseAvgPool4d', 'SparseBatchNorm',
    'SparseConv1d', 'SparseConv2d', 'SparseConv3d', 'SparseConv4d', 'SparseConvTensor', 'SparseConvolution',
    'SparseGlobalAvgPool', 'SparseGlobalMaxPool', 'SparseGroupNorm', 'SparseIdentity', 'SparseInverseConv1d',
    'SparseInverseConv2d', 'SparseInverseConv3d', 'SparseInverseConv4d', 'SparseMaxPool1d', 'SparseMaxPool2d',
    'SparseMaxPool3d', 'SparseMaxPool4d', 'SparseModule', 'SparsePool', 'SparseReLU', 'SparseSequential',
    'SparseTensor', 'SubMAttention', 'SubMAttention3d', 'SubMConv1d', 'SubMConv2d', 'SubMConv3d', 'SubMConv4d',
    'ToDense', 'VoxelBatch', 'convert_spconv1_state_dict', 'devoxelize', 'from_spconv', 'grid_shape', 'to_spconv',
    'voxelize_batch', 'voxelize_hard', 'voxelize_mean', 'weight_from_minkowski', 'weight_from_spconv1',
    'weight_to_minkowski', 'weight_to_spconv1',
]
