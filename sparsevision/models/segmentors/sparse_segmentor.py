"""Per-site segmentation of sparse scenes: a backbone that keeps the input sites, then a linear classifier."""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from ...registry import MODELS
from ...sparse import SparseTensor


@MODELS.register_module()
class SparseSegmentor(BaseModel):
    """backbone (``SparseTensor`` -> ``SparseTensor`` on the input sites) -> linear head -> a label per site.

    Labels come as ``data_sample.gt_seg`` (one per site, in each sample's
    coordinate order); predictions go to ``pred_seg`` (and ``seg_scores``).
    When a sample carries ``point_to_voxel`` (the site of each input point, -1
    for points outside the grid, see ``Voxelize``), each point also gets its
    site's label in ``pred_point_seg`` (-1 for points outside the grid).

    Args:
        backbone: config of a backbone returning features on its input sites (e.g. ``E3DSNNUNet``).
        num_classes: classes per site.
        in_channels: backbone output channels.
        data_preprocessor: usually ``SparseDataPreprocessor``.
        init_cfg: mmengine initialisation config.
    """

    def __init__(self, backbone: dict, num_classes: int, in_channels: int, data_preprocessor: Optional[dict] = None,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = nn.Linear(in_channels, num_classes)
        self.num_classes = num_classes

    def forward(self, inputs: SparseTensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        features = self.backbone(inputs)
        if features.indices.shape[0] != inputs.indices.shape[0]:
            raise ValueError('the backbone must return features on its input sites for per-site segmentation')
        logits = self.head(features.features)
        if mode == 'tensor':
            return logits
        if mode == 'loss':
            labels = torch.cat([sample.gt_seg for sample in data_samples]).to(logits.device)
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f'{labels.shape[0]} site labels for {logits.shape[0]} sites')
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == 'predict':
            counts = inputs.indices[:, 0].long().bincount(minlength=inputs.batch_size).tolist()
            samples = data_samples or [BaseDataElement() for _ in counts]
            for sample, scores in zip(samples, logits.softmax(dim=1).split(counts)):
                sample.set_field(scores, 'seg_scores')
                sample.set_field(scores.argmax(dim=1), 'pred_seg')
                if 'point_to_voxel' in sample:
                    sample.set_field(point_labels(sample.pred_seg, sample.point_to_voxel), 'pred_point_seg')
            return samples
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


def point_labels(site_labels: torch.Tensor, point_to_voxel: torch.Tensor) -> torch.Tensor:
    """The label of each point's site; -1 for points outside the grid (``point_to_voxel == -1``)."""
    point_to_voxel = point_to_voxel.to(site_labels.device).long()
    inside = point_to_voxel >= 0
    return torch.where(inside, site_labels[point_to_voxel.clamp(min=0)], torch.full_like(point_to_voxel, -1))
