"""Building blocks of sparse 3D backbones: convolution -> norm -> ReLU units and a residual basic block.

Module names follow mmdet3d (``make_sparse_convmodule``, ``SparseBasicBlock``), OpenPCDet and Pointcept, so the
backbones built from them load those projects' checkpoints: a unit is a ``SparseSequential`` whose children are
``0`` (convolution), ``1`` (norm), ``2`` (ReLU) in the order given; a basic block has ``conv1``, ``bn1``, ``conv2``,
``bn2`` and, when its input and output widths differ, a ``proj`` shortcut (``proj.0`` convolution, ``proj.1`` norm).
"""
from typing import Optional, Sequence, Union

import torch.nn as nn

from ...sparse import (SparseBatchNorm, SparseConv3d, SparseInverseConv3d, SparseModule, SparseSequential,
                       SparseTensor, SubMConv3d)
from ...sparse.modules import norm_relu

IntOrTriple = Union[int, Sequence[int]]

DEFAULT_NORM_CFG = dict(type='BN1d', eps=1e-3, momentum=0.01)
NORM_TYPES = ('BN1d', 'BN', 'SparseBatchNorm')
CONV_TYPES = {'SubMConv3d': SubMConv3d, 'SparseConv3d': SparseConv3d, 'SparseInverseConv3d': SparseInverseConv3d}


def build_sparse_norm(norm_cfg: Optional[dict], channels: int) -> SparseBatchNorm:
    """Batch norm over the sites of a SparseTensor from an mmdet3d-style ``norm_cfg`` (``type``, ``eps``, ``momentum``).

    The layer is a :class:`SparseBatchNorm`: an ``nn.BatchNorm1d`` (same parameters and state_dict keys) whose
    statistics are bitwise the same at any thread count.

    Raises:
        ValueError: a norm type other than batch norm (``'BN1d'``, ``'BN'``, ``'SparseBatchNorm'``).
    """
    options = dict(DEFAULT_NORM_CFG if norm_cfg is None else norm_cfg)
    norm_type = options.pop('type', 'BN1d')
    if norm_type not in NORM_TYPES:
        raise ValueError(f'norm_cfg type {norm_type!r} is not supported by the sparse blocks; use one of {NORM_TYPES}')
    requires_grad = options.pop('requires_grad', True)   # mmcv's flag: False freezes the affine parameters
    norm = SparseBatchNorm(channels, **options)
    norm.requires_grad_(requires_grad)
    return norm


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: IntOrTriple, indice_key: Optional[str] = None,
                  stride: IntOrTriple = 1, padding: IntOrTriple = 0, conv_type: str = 'SubMConv3d',
                  norm_cfg: Optional[dict] = None, order: Sequence[str] = ('conv', 'norm', 'act')) -> SparseSequential:
    """A sparse convolution (no bias), batch norm and ReLU, in ``order`` (mmdet3d's ``make_sparse_convmodule``).

    Args:
        in_channels, out_channels: feature widths.
        kernel_size, stride, padding: of the convolution (``stride``/``padding`` unused by submanifold and inverse
            convolutions).
        indice_key: kernel-map key; an inverse convolution names the strided convolution it undoes.
        conv_type: ``'SubMConv3d'``, ``'SparseConv3d'`` or ``'SparseInverseConv3d'``.
        norm_cfg: see :func:`build_sparse_norm`; eps 1e-3 and momentum 0.01 by default.
        order: the layers to stack, a subset of ``('conv', 'norm', 'act')`` in any order; the norm has
            ``out_channels`` after the convolution, ``in_channels`` before it.

    Raises:
        ValueError: an unknown ``conv_type`` or ``order``.
    """
    if conv_type not in CONV_TYPES:
        raise ValueError(f'conv_type must be one of {sorted(CONV_TYPES)}, got {conv_type!r}')
    if not order or len(set(order)) != len(order) or not set(order) <= {'conv', 'norm', 'act'}:
        raise ValueError(f"order must list distinct layers among 'conv', 'norm', 'act', got {order!r}")
    layers = []
    for position, layer in enumerate(order):
        if layer == 'conv':
            if conv_type == 'SparseInverseConv3d':
                layers.append(SparseInverseConv3d(in_channels, out_channels, kernel_size, indice_key, bias=False))
            else:
                layers.append(CONV_TYPES[conv_type](in_channels, out_channels, kernel_size, stride=stride,
                                                    padding=padding, bias=False, indice_key=indice_key))
        elif layer == 'norm':
            after_conv = 'conv' in order and order.index('conv') < order.index('norm')
            layers.append(build_sparse_norm(norm_cfg, out_channels if after_conv else in_channels))
        else:   # in place only on features this unit made (a leading ReLU must not change its input)
            layers.append(nn.ReLU(inplace=position > 0))
    return SparseSequential(*layers)


class SparseBasicBlock(SparseModule):
    """Residual block of two submanifold 3x3x3 convolutions: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``proj`` (a 1x1x1 submanifold convolution and batch norm) when the widths
    differ, as in Pointcept's SpUNet. Convolutions have no bias (mmdet3d, Pointcept).

    Args:
        in_channels: input width.
        out_channels: output width.
        norm_cfg: see :func:`build_sparse_norm`.
        indice_key: kernel-map key shared by both convolutions (optional: maps are cached per site set anyway).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: Optional[dict] = None,
                 indice_key: Optional[str] = None):
        super().__init__()
        self.conv1 = SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = build_sparse_norm(norm_cfg, out_channels)
        self.conv2 = SubMConv3d(out_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = build_sparse_norm(norm_cfg, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.proj = None
        if in_channels != out_channels:
            self.proj = SparseSequential(SubMConv3d(in_channels, out_channels, 1, bias=False),
                                         build_sparse_norm(norm_cfg, out_channels))

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.conv2(norm_relu(self.bn1, self.relu, self.conv1(x)))
        shortcut = x.features if self.proj is None else self.proj(x).features
        return norm_relu(self.bn2, self.relu, out, residual=shortcut)   # bn2, the residual add and the ReLU: one pass
