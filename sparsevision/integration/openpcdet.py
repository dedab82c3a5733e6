"""Our sparse encoders as an OpenPCDet ``BACKBONE_3D`` (``batch_dict`` in, ``batch_dict`` out); OpenPCDet not needed.

Register the class in OpenPCDet's ``pcdet/models/backbones_3d/__init__.py`` (``__all__['OpenPCDetBackbone3D'] =
OpenPCDetBackbone3D``) and name it in the model config::

    BACKBONE_3D:
        NAME: OpenPCDetBackbone3D
        SPARSEVISION_BACKBONE: {type: SparseEncoder, block_type: conv_module}   # optional; these are the defaults

The adapter also writes the BEV map ``spatial_features`` (what ``MAP_TO_BEV: HeightCompression`` computes; keep or
drop that module, it only recomputes the same map).
"""
from typing import Mapping, Sequence

import torch.nn as nn

from ..models.backbones.second import SparseEncoder, bev_map
from ..registry import MODELS


class OpenPCDetBackbone3D(nn.Module):
    """OpenPCDet's 3D backbone interface around a registered sparsevision encoder (default: :class:`SparseEncoder`).

    ``forward(batch_dict)`` reads ``voxel_features [N, C]``, ``voxel_coords [N, 4]`` (batch, z, y, x) and
    ``batch_size``, and adds ``encoded_spconv_tensor`` (the output of ``conv_out``, stride 8),
    ``encoded_spconv_tensor_stride``, ``multi_scale_3d_features`` (``x_conv1`` .. ``x_convN``, one per stage),
    ``multi_scale_3d_strides``, ``spatial_features`` (the dense BEV map ``[B, C * D, H, W]``) and
    ``spatial_features_stride``. The sparse tensors are :class:`sparsevision.sparse.SparseTensor` s, which have
    spconv's fields (``features``, ``indices``, ``spatial_shape``, ``batch_size``, ``dense()``).

    The adapter's modules carry OpenPCDet's names, ``conv_input``, ``conv1`` .. ``convN`` (the encoder's stages)
    and ``conv_out``, so its state_dict keys are ``VoxelBackBone8x``'s and OpenPCDet's checkpoint loading
    (``load_params_from_file``, which keeps the keys the model has) fills it from a VoxelBackBone8x checkpoint.

    Args:
        model_cfg: OpenPCDet's ``BACKBONE_3D`` config (a dict or EasyDict). ``SPARSEVISION_BACKBONE``, if given, is
            the encoder's config (``type`` defaults to ``'SparseEncoder'``); ``in_channels`` and ``sparse_shape``
            come from the two arguments below.
        input_channels: voxel feature channels (from the VFE).
        grid_size: the voxel grid ``(x, y, z)``; the encoder runs on ``(z + 1, y, x)``, as VoxelBackBone8x does.
        **kwargs: OpenPCDet's other arguments (``voxel_size``, ``point_cloud_range``), unused.

    Raises:
        ValueError: when the configured backbone is not a SECOND-style encoder (a :class:`SparseEncoder`).
    """

    def __init__(self, model_cfg: Mapping, input_channels: int, grid_size: Sequence[int], **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        backbone_cfg = dict(type='SparseEncoder')
        backbone_cfg.update(model_cfg.get('SPARSEVISION_BACKBONE') or {})
        x_size, y_size, z_size = (int(size) for size in grid_size)
        backbone_cfg.update(in_channels=int(input_channels), sparse_shape=[z_size + 1, y_size, x_size])
        encoder_type = backbone_cfg['type']
        encoder_class = encoder_type if isinstance(encoder_type, type) else MODELS.get(encoder_type)
        if not (isinstance(encoder_class, type) and issubclass(encoder_class, SparseEncoder)):
            raise ValueError(f'OpenPCDetBackbone3D needs a SECOND-style encoder (SparseEncoder or a subclass), got '
                             f'{encoder_type!r}')
        encoder = MODELS.build(backbone_cfg)
        # The encoder's layers are registered here under OpenPCDet's names (not as ``encoder.*``), so the keys
        # are VoxelBackBone8x's; the encoder object itself only runs them.
        object.__setattr__(self, 'encoder', encoder)
        self.conv_input = encoder.conv_input
        for index, stage in enumerate(encoder.encoder_layers.children(), 1):
            self.add_module(f'conv{index}', stage)
        self.conv_out = encoder.conv_out
        self.sparse_shape = encoder.sparse_shape
        self.num_point_features = encoder.conv_out[0].out_channels
        self.num_bev_features = encoder.out_channels
        self.backbone_channels = {f'x_conv{index}': width for index, width in enumerate(encoder.stage_channels, 1)}

    def forward(self, batch_dict: dict) -> dict:
        x = self.encoder.to_sparse_tensor(batch_dict['voxel_features'], batch_dict['voxel_coords'],
                                          batch_dict['batch_size'])
        stages, out = self.encoder.encode(x)
        names = list(self.backbone_channels)
        batch_dict.update(
            encoded_spconv_tensor=out,
            encoded_spconv_tensor_stride=self.encoder.stage_strides[-1],
            multi_scale_3d_features=dict(zip(names, stages)),
            multi_scale_3d_strides=dict(zip(names, self.encoder.stage_strides)),
            spatial_features=bev_map(out),
            spatial_features_stride=self.encoder.stage_strides[-1],
        )
        return batch_dict
