"""CenterPoint's detection head: a heatmap of box centres per class plus box regression at the centre cells."""
import math
from typing import List, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import InstanceData

from ...registry import MODELS
from ...sparse import grid_shape
from ...structures import bev_nms, box_tensor
from ..layers import conv2d_norm_act

# Regression channels, in order: sub-cell offset (2), z of the gravity centre (1), log sizes (3), sin and cos of yaw
# (of 2 * yaw with heading_agnostic).
REGRESSION_CHANNELS = ('offset_x', 'offset_y', 'z', 'log_dx', 'log_dy', 'log_dz', 'sin_yaw', 'cos_yaw')


class CenterTargets(NamedTuple):
    """Training targets of a batch.

    Attributes:
        heatmap: ``[B, num_classes, H, W]`` Gaussian peaks (exactly 1 at each box's centre cell).
        batch_index: ``[T]`` sample of each box that lies on the map.
        cell_index: ``[T]`` flat centre cell ``y * W + x`` of each box.
        regression: ``[T, 8]`` regression targets (see ``REGRESSION_CHANNELS``).
    """
    heatmap: torch.Tensor
    batch_index: torch.Tensor
    cell_index: torch.Tensor
    regression: torch.Tensor


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """Radius (in cells) within which a shifted box still overlaps the true one by ``min_overlap`` IoU.

    The smallest root of CornerNet's three corner-displacement cases (Law and
    Deng, 2018), the rule CenterNet and CenterPoint use to size their Gaussians.
    As in their code, each root is ``(b + sqrt(b^2 - 4ac)) / 2`` rather than
    divided by ``2a``, so the radii are looser than the geometric bound; the
    ``min_radius`` floor of :class:`CenterHead` governs small boxes anyway.

    Args:
        length: ``[M]`` box extents along one axis, in cells.
        width: ``[M]`` box extents along the other axis, in cells.
        min_overlap: IoU a box displaced by the radius keeps.

    Returns:
        ``[M]`` radii (not rounded).
    """
    size_sum, area = length + width, length * width
    # The box shifts: one corner moves inside the true box, the other outside.
    c1 = area * (1 - min_overlap) / (1 + min_overlap)
    r1 = (size_sum + torch.sqrt(size_sum ** 2 - 4 * c1)) / 2
    # Both corners move inside (a smaller box).
    b2, c2 = 2 * size_sum, (1 - min_overlap) * area
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    # Both corners move outside (a larger box).
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * size_sum, (min_overlap - 1) * area
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 2.0,
                        beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks (cells equal to 1).

    Args:
        logits: heatmap logits.
        targets: Gaussian heatmap targets in [0, 1], same shape.
        alpha: focusing exponent on the prediction.
        beta: exponent of the penalty reduction ``(1 - target) ** beta`` near peaks.
    """
    log_probability, log_complement = F.logsigmoid(logits), F.logsigmoid(-logits)
    probability = log_probability.exp()
    peaks = targets.eq(1)
    positive = (1 - probability) ** alpha * log_probability
    negative = (1 - targets) ** beta * probability ** alpha * log_complement
    loss = -torch.where(peaks, positive, negative).sum()
    return loss / peaks.sum().clamp(min=1)


@MODELS.register_module()
class CenterHead(nn.Module):
    """Detect boxes as heatmap peaks on the BEV map and regress each box at its centre cell.

    Training draws a Gaussian per box at its centre cell on the heatmap of its
    class (radius from :func:`gaussian_radius`, at least ``min_radius``),
    learned with :func:`gaussian_focal_loss`; the 8 regression channels
    (sub-cell offset, z, log sizes, sin/cos yaw) are learned with an L1 loss at
    the centre cells only. Decoding keeps the 3x3 local maxima of the heatmap,
    the ``max_candidates`` best of them, those scoring at least
    ``score_threshold``, then rotated BEV NMS per class. After CenterPoint
    (Yin et al., 2021, "Center-based 3D Object Detection and Tracking").

    Cell ``(row, column)`` of the map covers x from ``x_min + column * cell``
    with ``cell = voxel_size * out_size_factor`` (y likewise with rows).

    Args:
        in_channels: channels of the BEV feature map.
        num_classes: box classes (one heatmap each).
        voxel_size: ``(x, y, z)`` voxel size of the sparse grid, metres.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` of the grid.
        out_size_factor: voxels per BEV cell (the backbone and neck stride).
        head_channels: channels of the shared and branch convolutions.
        min_radius: smallest Gaussian radius in cells.
        min_overlap: IoU the Gaussian radius preserves.
        heatmap_loss_weight: weight of the focal loss.
        regression_loss_weight: weight of the L1 loss.
        regression_weights: per-channel weights of the L1 loss (8 values).
        max_candidates: heatmap peaks kept per sample before thresholding and NMS.
        score_threshold: lowest score of a detection.
        nms_iou_threshold: BEV IoU above which a lower-scoring box of the same class is dropped.
        max_detections: detections returned per sample.
        heading_agnostic: regress the box axis (``sin 2 yaw``, ``cos 2 yaw``) instead of the heading, for data
            where the front of an object is hard to tell from its back; decoded yaws then lie in
            ``(-pi/2, pi/2]``. BEV and 3D IoU do not change when a box is turned by pi.

    Raises:
        ValueError: malformed geometry or settings.
    """

    def __init__(self, in_channels: int, num_classes: int, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], out_size_factor: int, head_channels: int = 64,
                 min_radius: int = 2, min_overlap: float = 0.1, heatmap_loss_weight: float = 1.0,
                 regression_loss_weight: float = 0.25, regression_weights: Sequence[float] = (1.0,) * 8,
                 max_candidates: int = 500, score_threshold: float = 0.1, nms_iou_threshold: float = 0.2,
                 max_detections: int = 100, heading_agnostic: bool = False):
        super().__init__()
        _, height, width = grid_shape(voxel_size, point_cloud_range)
        if not isinstance(out_size_factor, int) or out_size_factor < 1:
            raise ValueError(f'out_size_factor must be a positive int (voxels per BEV cell), got {out_size_factor!r}')
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if len(regression_weights) != len(REGRESSION_CHANNELS):
            raise ValueError(f'regression_weights needs {len(REGRESSION_CHANNELS)} values '
                             f'{REGRESSION_CHANNELS}, got {len(regression_weights)}')
        self.num_classes = num_classes
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.out_size_factor = out_size_factor
        self.map_size = (math.ceil(height / out_size_factor), math.ceil(width / out_size_factor))
        self.cell_size = (self.voxel_size[0] * out_size_factor, self.voxel_size[1] * out_size_factor)
        self.min_radius, self.min_overlap = min_radius, min_overlap
        self.heatmap_loss_weight, self.regression_loss_weight = heatmap_loss_weight, regression_loss_weight
        self.register_buffer('regression_weights', torch.tensor(regression_weights, dtype=torch.float32),
                             persistent=False)
        self.max_candidates, self.score_threshold = max_candidates, score_threshold
        self.nms_iou_threshold, self.max_detections = nms_iou_threshold, max_detections
        self.yaw_multiple = 2 if heading_agnostic else 1   # the angle regressed is yaw_multiple * yaw

        self.shared = conv2d_norm_act(in_channels, head_channels)
        self.heatmap = nn.Sequential(conv2d_norm_act(head_channels, head_channels),
                                     nn.Conv2d(head_channels, num_classes, 1))
        self.regression = nn.Sequential(conv2d_norm_act(head_channels, head_channels),
                                        nn.Conv2d(head_channels, len(REGRESSION_CHANNELS), 1))
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))   # start at 0.1 everywhere

    def forward(self, bev: torch.Tensor):
        """``[B, C, H, W]`` -> heatmap logits ``[B, num_classes, H, W]`` and regression ``[B, 8, H, W]``.

        Raises:
            ValueError: when ``H, W`` is smaller than the map the geometry gives (a larger map is cropped to it).
        """
        if bev.shape[2] < self.map_size[0] or bev.shape[3] < self.map_size[1]:
            raise ValueError(
                f'CenterHead got a {tuple(bev.shape[2:])} BEV map, but voxel_size {self.voxel_size}, '
                f'point_cloud_range {self.point_cloud_range} and out_size_factor {self.out_size_factor} give '
                f'{self.map_size} cells: set out_size_factor to the BEV stride of the backbone and neck, and use the '
                'same voxel_size and point_cloud_range as the Voxelize transform')
        # a neck upsampling from a coarser stride may give a row or column past the range: cropped
        shared = self.shared(bev[:, :, :self.map_size[0], :self.map_size[1]])
        return self.heatmap(shared), self.regression(shared)

    def get_targets(self, gt_boxes: List[torch.Tensor], gt_labels: List[torch.Tensor]) -> CenterTargets:
        """Heatmap and centre-cell regression targets; boxes whose centre is off the map are ignored.

        Args:
            gt_boxes: per sample ``[M, 7]`` boxes ``(x, y, z, dx, dy, dz, yaw)``.
            gt_labels: per sample ``[M]`` class indices in ``[0, num_classes)``.
        """
        height, width = self.map_size
        device = gt_boxes[0].device if gt_boxes else torch.device('cpu')
        boxes = torch.cat([box_tensor(b) for b in gt_boxes]).to(device)
        labels = torch.cat([label.reshape(-1) for label in gt_labels]).long().to(device)
        batch = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(gt_boxes)]).to(device)
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f'{labels.shape[0]} gt_labels_3d for {boxes.shape[0]} gt_bboxes_3d')
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f'gt_labels_3d must lie in [0, {self.num_classes}), got labels from '
                             f'{labels.min().item()} to {labels.max().item()}')
        centre_x = (boxes[:, 0] - self.point_cloud_range[0]) / self.cell_size[0]
        centre_y = (boxes[:, 1] - self.point_cloud_range[1]) / self.cell_size[1]
        column, row = centre_x.floor().long(), centre_y.floor().long()
        on_map = (column >= 0) & (column < width) & (row >= 0) & (row < height)
        boxes, labels, batch = boxes[on_map], labels[on_map], batch[on_map]
        centre_x, centre_y, column, row = centre_x[on_map], centre_y[on_map], column[on_map], row[on_map]

        radius = gaussian_radius(boxes[:, 3] / self.cell_size[0], boxes[:, 4] / self.cell_size[1], self.min_overlap)
        radius = radius.floor().long().clamp(min=self.min_radius)
        heatmap = torch.zeros(len(gt_boxes) * self.num_classes * height * width, device=device)
        if boxes.shape[0]:
            largest = int(radius.max())
            steps = torch.arange(-largest, largest + 1, device=device)
            step_y, step_x = torch.meshgrid(steps, steps, indexing='ij')
            step_x, step_y = step_x.reshape(1, -1), step_y.reshape(1, -1)
            sigma = (2 * radius[:, None] + 1).float() / 6
            values = torch.exp(-(step_x ** 2 + step_y ** 2).float() / (2 * sigma ** 2))
            cells_x, cells_y = column[:, None] + step_x, row[:, None] + step_y
            inside = ((step_x.abs() <= radius[:, None]) & (step_y.abs() <= radius[:, None]) & (cells_x >= 0)
                      & (cells_x < width) & (cells_y >= 0) & (cells_y < height))
            flat = ((batch[:, None] * self.num_classes + labels[:, None]) * height + cells_y) * width + cells_x
            heatmap.scatter_reduce_(0, flat[inside], values[inside], reduce='amax')
        regression = torch.stack([
            centre_x - column, centre_y - row, boxes[:, 2],
            *boxes[:, 3:6].clamp(min=1e-3).log().unbind(1), (self.yaw_multiple * boxes[:, 6]).sin(),
            (self.yaw_multiple * boxes[:, 6]).cos()], dim=1)
        return CenterTargets(heatmap.reshape(len(gt_boxes), self.num_classes, height, width), batch,
                             row * width + column, regression)

    def loss(self, bev: torch.Tensor, gt_boxes: List[torch.Tensor], gt_labels: List[torch.Tensor]) -> dict:
        """Focal heatmap loss and L1 regression loss of a batch.

        Args:
            bev: ``[B, C, H, W]`` BEV features.
            gt_boxes: per sample ``[M, 7]`` boxes.
            gt_labels: per sample ``[M]`` labels.

        Returns:
            ``dict(loss_heatmap, loss_bbox)``.
        """
        heatmap_logits, regression = self(bev)
        targets = self.get_targets([b.to(bev.device) for b in gt_boxes], [label.to(bev.device) for label in gt_labels])
        loss_heatmap = gaussian_focal_loss(heatmap_logits, targets.heatmap)
        predicted = regression.flatten(2)[targets.batch_index, :, targets.cell_index]      # [T, 8]
        error = (predicted - targets.regression).abs() * self.regression_weights
        loss_bbox = error.sum() / max(targets.regression.shape[0], 1)
        return dict(loss_heatmap=self.heatmap_loss_weight * loss_heatmap,
                    loss_bbox=self.regression_loss_weight * loss_bbox)

    def predict(self, bev: torch.Tensor) -> List[InstanceData]:
        """Detections of each sample: ``InstanceData(bboxes_3d [K, 7], scores_3d [K], labels_3d [K])``."""
        return self.decode(*self(bev))

    @torch.no_grad()
    def decode(self, heatmap_logits: torch.Tensor, regression: torch.Tensor) -> List[InstanceData]:
        """Boxes from head outputs: 3x3 peak picking, top ``max_candidates``, score threshold, per-class BEV NMS.

        Args:
            heatmap_logits: ``[B, num_classes, H, W]``.
            regression: ``[B, 8, H, W]``.

        Returns:
            Per sample ``InstanceData(bboxes_3d, scores_3d, labels_3d)``, by descending score.
        """
        batch_size, _, height, width = heatmap_logits.shape
        scores = heatmap_logits.sigmoid()
        scores = scores * (scores == F.max_pool2d(scores, 3, stride=1, padding=1))
        # a stable sort, not topk: equal scores (a flat heatmap) keep the lowest cells, on every device
        top_index = scores.flatten(1).argsort(dim=1, descending=True, stable=True)[:, :self.max_candidates]
        top_scores = scores.flatten(1).gather(1, top_index)
        labels, cells = top_index // (height * width), top_index % (height * width)
        values = regression.flatten(2).gather(2, cells[:, None, :].expand(-1, regression.shape[1], -1))
        x = ((cells % width).float() + values[:, 0]) * self.cell_size[0] + self.point_cloud_range[0]
        y = ((cells // width).float() + values[:, 1]) * self.cell_size[1] + self.point_cloud_range[1]
        sizes = values[:, 3:6].clamp(max=10).exp()
        yaw = torch.atan2(values[:, 6], values[:, 7]) / self.yaw_multiple
        boxes = torch.stack([x, y, values[:, 2], sizes[:, 0], sizes[:, 1], sizes[:, 2], yaw], dim=2)   # [B, k, 7]
        results = []
        for sample in range(batch_size):
            keep = top_scores[sample] >= self.score_threshold
            sample_boxes, sample_scores = boxes[sample][keep], top_scores[sample][keep]
            sample_labels = labels[sample][keep]
            kept = [sample_labels.new_zeros(0)]
            for label in sample_labels.unique().tolist():
                members = torch.nonzero(sample_labels == label).flatten()
                kept.append(members[bev_nms(sample_boxes[members], sample_scores[members], self.nms_iou_threshold)])
            kept = torch.cat(kept)
            kept = kept[sample_scores[kept].argsort(descending=True, stable=True)][:self.max_detections]
            results.append(InstanceData(bboxes_3d=sample_boxes[kept], scores_3d=sample_scores[kept],
                                        labels_3d=sample_labels[kept]))
        return results
