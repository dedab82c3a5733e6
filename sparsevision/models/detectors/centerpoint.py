"""CenterPoint: a sparse 3D encoder to a BEV map, a 2D neck, and a center-based detection head."""
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from ...registry import MODELS
from ...sparse import SparseTensor, grid_shape


def _build(module: Union[dict, nn.Module]) -> nn.Module:
    return module if isinstance(module, nn.Module) else MODELS.build(module)


@MODELS.register_module()
class CenterPoint(BaseModel):
    """Voxels -> sparse encoder -> dense BEV map -> BEV neck -> ``CenterHead`` -> 3D boxes.

    After Yin et al., 2021, "Center-based 3D Object Detection and Tracking".
    The model owns the geometry: ``voxel_size`` and ``point_cloud_range`` fix
    the sparse grid its inputs must lie on (the ``Voxelize`` transform's) and
    are passed to the head, which maps BEV cells back to metres.

    Modes of ``forward``:

    * ``'loss'``: ``dict(loss_heatmap, loss_bbox)`` from ``data_sample.gt_bboxes_3d`` ``[M, 7]`` and
      ``gt_labels_3d`` ``[M]``;
    * ``'predict'``: sets ``data_sample.pred_instances_3d = InstanceData(bboxes_3d, scores_3d, labels_3d)``;
    * ``'tensor'``: the head outputs, heatmap logits ``[B, K, H, W]`` and regression ``[B, 8, H, W]``.

    Args:
        backbone: config (or module) taking a ``SparseTensor`` and returning the BEV map ``[B, C, H, W]``
            (e.g. ``SparseEncoder``).
        neck: config (or module) of a 2D neck (e.g. ``BEVNeck``); ``None`` feeds the BEV map to the head.
        head: config (or module) of a ``CenterHead``; ``voxel_size`` and ``point_cloud_range`` are filled in.
        voxel_size: ``(x, y, z)`` voxel size in metres.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres.
        data_preprocessor: default ``SparseDataPreprocessor``.
        init_cfg: mmengine initialisation config.

    Raises:
        ValueError: malformed geometry, or a head config with a different one.
    """

    def __init__(self, backbone: Union[dict, nn.Module], head: Union[dict, nn.Module], voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], neck: Optional[Union[dict, nn.Module]] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='SparseDataPreprocessor'),
                         init_cfg=init_cfg)
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.grid_shape = list(grid_shape(self.voxel_size, self.point_cloud_range))
        self.backbone = _build(backbone)
        self.neck = _build(neck) if neck is not None else nn.Identity()
        if isinstance(head, dict):
            head = dict(head)
            for name, value in (('voxel_size', self.voxel_size), ('point_cloud_range', self.point_cloud_range)):
                if name in head and [float(v) for v in head[name]] != value:
                    raise ValueError(f'the head config has {name}={list(head[name])} but the model has {value}; '
                                     f'leave {name} out of the head config (the model fills it in)')
                head[name] = value
        self.head = _build(head)
        head_geometry = ([float(v) for v in getattr(self.head, 'voxel_size', self.voxel_size)],
                         [float(v) for v in getattr(self.head, 'point_cloud_range', self.point_cloud_range)])
        if head_geometry != (self.voxel_size, self.point_cloud_range):
            raise ValueError(f'the head has voxel_size {head_geometry[0]} and point_cloud_range {head_geometry[1]} '
                             f'but the model has {self.voxel_size} and {self.point_cloud_range}')

    def extract_features(self, inputs: SparseTensor):
        """The BEV feature map ``[B, C, H, W]`` the head reads.

        Raises:
            ValueError: inputs on another grid than ``voxel_size`` and ``point_cloud_range`` give.
        """
        if not isinstance(inputs, SparseTensor):
            raise ValueError(f'CenterPoint takes a SparseTensor (from SparseDataPreprocessor), got '
                             f'{type(inputs).__name__}')
        if list(inputs.spatial_shape) != self.grid_shape:
            raise ValueError(
                f'CenterPoint got a sparse grid {list(inputs.spatial_shape)} (D, H, W) but voxel_size '
                f'{self.voxel_size} and point_cloud_range {self.point_cloud_range} give {self.grid_shape}: use the '
                'same voxel_size and point_cloud_range in the Voxelize transform and in the model')
        return self.neck(self.backbone(inputs))

    def forward(self, inputs: SparseTensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode not in ('loss', 'predict', 'tensor'):
            raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
        features = self.extract_features(inputs)
        if mode == 'tensor':
            return self.head(features)
        if mode == 'loss':
            if not data_samples or any('gt_bboxes_3d' not in s or 'gt_labels_3d' not in s for s in data_samples):
                raise ValueError("mode 'loss' needs data samples with gt_bboxes_3d and gt_labels_3d (packed by "
                                 'PackPointCloudInputs from the dataset boxes)')
            return self.head.loss(features, [s.gt_bboxes_3d for s in data_samples],
                                  [s.gt_labels_3d for s in data_samples])
        samples = data_samples or [BaseDataElement() for _ in range(inputs.batch_size)]
        for sample, detections in zip(samples, self.head.predict(features)):
            sample.pred_instances_3d = detections
        return samples
