"""SECOND's sparse 3D encoder (mmdet3d ``SparseEncoder``, OpenPCDet ``VoxelBackBone8x``) on the sparse engine."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule

from ...ops import check_indices
from ...registry import MODELS
from ...sparse import SparseSequential, SparseTensor
from ..layers import SparseBasicBlock, conv_norm_act
from ..layers.sparse_blocks import DEFAULT_NORM_CFG

BLOCK_TYPES = ('conv_module', 'basicblock')


def bev_map(x: SparseTensor) -> torch.Tensor:
    """Dense bird's-eye-view map ``[B, C * D, H, W]`` of a 3D SparseTensor (OpenPCDet's ``HeightCompression``)."""
    dense = x.dense()
    batch, channels, depth, height, width = dense.shape
    return dense.view(batch, channels * depth, height, width)


def _downsampled(shape: List[int], padding, name: str) -> List[int]:
    """The grid after a kernel-3 stride-2 convolution with ``padding`` (an int or one per axis)."""
    paddings = [padding] * 3 if isinstance(padding, int) else list(padding)
    out = [(size + 2 * pad - 3) // 2 + 1 for size, pad in zip(shape, paddings)]
    if min(out) < 1:
        raise ValueError(f'{name} would shrink the grid {shape} to {out}: sparse_shape is too small for this encoder')
    return out


@MODELS.register_module()
class SparseEncoder(BaseModule):
    """SECOND's sparse encoder (Yan et al., "SECOND: Sparsely Embedded Convolutional Detection", Sensors 2018).

    mmdet3d's ``SparseEncoder`` with its arguments, layout and state_dict keys (``conv_input.0.weight``,
    ``encoder_layers.encoder_layer1.0.0.weight``, ..., ``conv_out.0.weight``), so mmdet3d checkpoints load with
    ``strict=True``; with the defaults it is also OpenPCDet's ``VoxelBackBone8x`` (keys renamed, see
    :mod:`sparsevision.integration.openpcdet`). A submanifold stem, four stages (each after the first starts with
    a kernel-3 stride-2 sparse convolution, then submanifold convolutions), and ``conv_out``, a (3, 1, 1)
    stride-(2, 1, 1) convolution over height; every convolution is followed by batch norm (eps 1e-3, momentum
    0.01) and ReLU. ``block_type='basicblock'`` makes each stage residual basic blocks ending with the strided
    convolution (mmdet3d's CenterPoint encoder, a VoxelResBackBone8x-like layout).

    Inputs, either:

    * ``forward(voxel_features [N, C], coors [N, 4], batch_size)``, coors int ``(batch, z, y, x)`` (mmdet3d,
      OpenPCDet), placed on the ``sparse_shape`` grid; or
    * ``forward(sparse_tensor)`` (sparsevision's ``SparseDataPreprocessor``). The encoder always runs on
      ``sparse_shape``, as in mmdet3d, so the BEV map's size comes from the config and not from the batch: a
      tensor on a smaller grid (typically the voxel grid ``[D, H, W]`` when ``sparse_shape`` is
      ``[D + 1, H, W]``) is placed on ``sparse_shape``; a tensor on a larger grid is refused.

    Output: the dense BEV map ``[B, output_channels * D_out, H_out, W_out]``; with ``return_middle_feats`` also the
    list of every stage's SparseTensor (``(bev, stages)``). ``out_channels`` is the BEV map's channel count
    (256 for KITTI's ``sparse_shape=[41, 1600, 1408]``: ``[B, 256, 200, 176]``).

    Args:
        in_channels: voxel feature channels.
        sparse_shape: the grid ``(D, H, W)``, ``grid_size[::-1] + [1, 0, 0]`` in mmdet3d/OpenPCDet configs.
        order: as mmdet3d: with ``order[0] != 'conv'`` (pre-activation) the stem is a bare convolution; every other
            unit is convolution -> norm -> ReLU. A permutation of ``('conv', 'norm', 'act')``.
        norm_cfg: batch norm config (``type`` ``'BN1d'``, ``eps``, ``momentum``).
        base_channels: stem width.
        output_channels: width of ``conv_out``.
        encoder_channels: the widths of each stage's units.
        encoder_paddings: the padding of each unit (used by the strided ones; an int or ``(z, y, x)``).
        block_type: ``'conv_module'`` or ``'basicblock'``.
        return_middle_feats: also return the stages' SparseTensors.
        init_cfg: mmengine initialisation config.

    Raises:
        ValueError: at build time for inconsistent arguments; in ``forward`` for malformed coordinates,
            coordinates outside ``sparse_shape`` or batch indices ``>= batch_size``.
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], order: Sequence[str] = ('conv', 'norm', 'act'),
                 norm_cfg: Optional[dict] = DEFAULT_NORM_CFG, base_channels: int = 16, output_channels: int = 128,
                 encoder_channels: Sequence[Sequence[int]] = ((16,), (32, 32, 32), (64, 64, 64), (64, 64, 64)),
                 encoder_paddings: Sequence[Sequence] = ((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1)),
                 block_type: str = 'conv_module', return_middle_feats: bool = False, init_cfg=None):
        super().__init__(init_cfg)
        if block_type not in BLOCK_TYPES:
            raise ValueError(f'block_type must be one of {BLOCK_TYPES}, got {block_type!r}')
        if sorted(order) != ['act', 'conv', 'norm']:
            raise ValueError(f"order must be a permutation of ('conv', 'norm', 'act'), got {order!r}")
        if len(sparse_shape) != 3 or min(sparse_shape) < 1:
            raise ValueError(f'sparse_shape must be 3 positive sizes (D, H, W), got {sparse_shape!r}')
        if len(encoder_paddings) != len(encoder_channels) or any(
                len(paddings) < len(widths) for widths, paddings in zip(encoder_channels, encoder_paddings)):
            raise ValueError(f'encoder_paddings {encoder_paddings!r} must give a padding for every unit of '
                             f'encoder_channels {encoder_channels!r}')
        self.in_channels = in_channels
        self.sparse_shape = [int(size) for size in sparse_shape]
        self.block_type = block_type
        self.return_middle_feats = return_middle_feats
        self.conv_input = conv_norm_act(in_channels, base_channels, 3, 'subm1', padding=1, norm_cfg=norm_cfg,
                                        order=('conv', 'norm', 'act') if order[0] == 'conv' else ('conv',))
        self.encoder_layers = SparseSequential()
        self.stage_channels, self.stage_strides = [], []
        width, stride, shape = base_channels, 1, self.sparse_shape
        for stage, (widths, paddings) in enumerate(zip(encoder_channels, encoder_paddings)):
            units = []
            for index, (out_width, padding) in enumerate(zip(widths, paddings)):
                if block_type == 'conv_module':
                    strided = stage > 0 and index == 0
                else:
                    strided = index == len(widths) - 1 and stage < len(encoder_channels) - 1
                if strided:
                    units.append(conv_norm_act(width, out_width, 3, f'spconv{stage + 1}', stride=2, padding=padding,
                                               conv_type='SparseConv3d', norm_cfg=norm_cfg))
                    stride, shape = stride * 2, _downsampled(shape, padding, f'encoder_layer{stage + 1}.{index}')
                elif block_type == 'conv_module':
                    units.append(conv_norm_act(width, out_width, 3, f'subm{stage + 1}', padding=padding,
                                               norm_cfg=norm_cfg))
                elif out_width != width:
                    raise ValueError(f'a basic block keeps its width: encoder_channels[{stage}][{index}] is '
                                     f'{out_width} but its input has {width} channels (widen with the strided unit '
                                     'that ends the previous stage)')
                else:
                    units.append(SparseBasicBlock(width, width, norm_cfg))
                width = out_width
            self.encoder_layers.add_module(f'encoder_layer{stage + 1}', SparseSequential(*units))
            self.stage_channels.append(width)
            self.stage_strides.append(stride)
        self.conv_out = conv_norm_act(width, output_channels, (3, 1, 1), 'spconv_down2', stride=(2, 1, 1), padding=0,
                                      conv_type='SparseConv3d', norm_cfg=norm_cfg)
        out_depth = (shape[0] - 3) // 2 + 1
        if out_depth < 1:
            raise ValueError(f'conv_out needs at least 3 height cells, the last stage has {shape[0]}: '
                             'sparse_shape is too small for this encoder')
        self.out_channels = output_channels * out_depth
        self.bev_shape = tuple(shape[1:])

    def to_sparse_tensor(self, voxel_features: Union[torch.Tensor, SparseTensor], coors: Optional[torch.Tensor] = None,
                         batch_size: Optional[int] = None) -> SparseTensor:
        """The input as a SparseTensor on ``sparse_shape`` (see the class docstring)."""
        if isinstance(voxel_features, SparseTensor):
            if coors is not None or batch_size is not None:
                raise ValueError('pass either a SparseTensor or (voxel_features, coors, batch_size), not both')
            x = voxel_features
            if x.spatial_shape == self.sparse_shape:
                return x
            if x.ndim != 3 or any(size > limit for size, limit in zip(x.spatial_shape, self.sparse_shape)):
                raise ValueError(f'the input grid {x.spatial_shape} does not fit in sparse_shape {self.sparse_shape}; '
                                 'set sparse_shape to the voxel grid with one more height cell, (D + 1, H, W) '
                                 '(mmdet3d/OpenPCDet: grid_size[::-1] + [1, 0, 0])')
            return SparseTensor(x.features, x.indices, self.sparse_shape, x.batch_size)
        if coors is None or batch_size is None:
            raise ValueError('SparseEncoder takes a SparseTensor or (voxel_features, coors, batch_size)')
        if not torch.is_tensor(voxel_features) or voxel_features.dim() != 2 or not voxel_features.is_floating_point():
            raise ValueError('voxel_features must be a float tensor [N, C], got '
                             f'{getattr(voxel_features, "shape", type(voxel_features).__name__)}')
        if not torch.is_tensor(coors) or coors.dim() != 2 or coors.shape != (voxel_features.shape[0], 4):
            raise ValueError(f'coors must be [N, 4] = (batch, z, y, x) with N = {voxel_features.shape[0]} voxels, '
                             f'got {getattr(coors, "shape", type(coors).__name__)}')
        indices = check_indices(coors, self.sparse_shape, int(batch_size), name='coors')
        return SparseTensor(voxel_features, indices, self.sparse_shape, int(batch_size))

    def encode(self, x: SparseTensor) -> Tuple[List[SparseTensor], SparseTensor]:
        """Every stage's output (finest first) and ``conv_out``'s (stride 8 for the defaults)."""
        x = self.conv_input(x)
        stages = []
        for stage in self.encoder_layers.children():
            x = stage(x)
            stages.append(x)
        return stages, self.conv_out(x)

    def forward(self, voxel_features: Union[torch.Tensor, SparseTensor], coors: Optional[torch.Tensor] = None,
                batch_size: Optional[int] = None):
        stages, out = self.encode(self.to_sparse_tensor(voxel_features, coors, batch_size))
        bev = bev_map(out)
        return (bev, stages) if self.return_middle_feats else bev
