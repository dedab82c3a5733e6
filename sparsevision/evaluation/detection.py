"""3D object detection: average precision of BEV and 3D boxes per class (KITTI's 40-point interpolation)."""
import logging
from typing import Callable, Dict, List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from ..registry import METRICS
from ..structures import bev_iou, box_tensor, iou_3d

OVERLAPS: Dict[str, Callable] = {'BEV': bev_iou, '3D': iou_3d}


def _field(container, name: str):
    """``container[name]`` for the dicts mmengine's evaluator passes, ``container.name`` for data elements."""
    return container[name] if isinstance(container, dict) else getattr(container, name)


def match_detections(overlaps: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy matching of one frame: by descending score, each detection takes the free ground truth it overlaps most.

    Args:
        overlaps: ``[P, G]`` IoU of detections with ground-truth boxes.
        scores: ``[P]`` detection scores (ties: lower index first).
        threshold: smallest IoU of a match.

    Returns:
        ``[P]`` bool, whether each detection is a true positive.
    """
    true_positive = torch.zeros(scores.shape[0], dtype=torch.bool)
    if overlaps.numel() == 0:
        return true_positive
    free = torch.ones(overlaps.shape[1], dtype=torch.bool)
    for detection in scores.argsort(descending=True, stable=True).tolist():
        candidates = torch.where(free & (overlaps[detection] >= threshold), overlaps[detection], -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= 0:
            free[best] = False
            true_positive[detection] = True
    return true_positive


def interpolated_average_precision(scores: torch.Tensor, true_positive: torch.Tensor, num_ground_truth: int,
                                   recall_points: int = 40) -> float:
    """Precision averaged at recalls ``1/R, 2/R, ..., 1``, each the best precision at that recall or beyond.

    With ``R = 40`` this is KITTI's ``AP|R40`` (Simonelli et al., 2019); recall 0 is left out.

    Args:
        scores: ``[P]`` scores of all detections of one class.
        true_positive: ``[P]`` whether each was matched.
        num_ground_truth: ground-truth boxes of the class (> 0).
        recall_points: ``R``.

    Returns:
        AP in [0, 1].
    """
    if scores.numel() == 0:
        return 0.0
    order = scores.argsort(descending=True, stable=True)
    hits = true_positive[order].double().cumsum(0)
    precision = hits / torch.arange(1, hits.shape[0] + 1, dtype=torch.float64)
    recall = hits / num_ground_truth
    # Best precision at this recall or any higher one: a running maximum from the end.
    precision = precision.flip(0).cummax(0).values.flip(0)
    levels = torch.arange(1, recall_points + 1, dtype=torch.float64) / recall_points
    reached = torch.searchsorted(recall, levels - 1e-12)   # first detection whose recall reaches each level
    interpolated = torch.zeros_like(levels)
    attained = reached < precision.shape[0]
    interpolated[attained] = precision[reached[attained]]
    return interpolated.mean().item()


@METRICS.register_module()
class DetectionAP(BaseMetric):
    """Average precision of 3D detections per class, for BEV IoU and 3D IoU at several thresholds.

    Detections of each frame are matched greedily by score to ground-truth
    boxes of their class (:func:`match_detections`), then AP is KITTI's
    40-point interpolation (:func:`interpolated_average_precision`), in [0, 1].
    Frames without ground truth or without detections count normally (their
    detections are false positives, their boxes missed). A class with no
    ground-truth box in the whole evaluation has no AP: it is left out (with a
    warning), and the means cover the other classes (0 if none is left).

    Reported as ``detection/<class>_BEV_AP@0.5``, ``detection/<class>_3D_AP@0.5``, ...
    and ``detection/mean_BEV_AP@0.5``, ``detection/mean_3D_AP@0.5``, ... per threshold.

    Reads ``pred_instances_3d`` (``bboxes_3d``, ``scores_3d``, ``labels_3d``), ``gt_bboxes_3d`` and
    ``gt_labels_3d`` of each data sample.

    Args:
        class_names: box class names; default the dataset's ``box_classes`` metainfo.
        iou_thresholds: IoU thresholds of a match.
        recall_points: interpolation points (40: KITTI's R40).
        collect_device: ``'cpu'`` or ``'gpu'`` for gathering across processes.
        prefix: key prefix of the results.
    """

    default_prefix = 'detection'

    def __init__(self, class_names: Optional[Sequence[str]] = None, iou_thresholds: Sequence[float] = (0.5, 0.7),
                 recall_points: int = 40, collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not iou_thresholds or not all(0 < t <= 1 for t in iou_thresholds):
            raise ValueError(f'iou_thresholds must be values in (0, 1], got {iou_thresholds}')
        if recall_points < 1:
            raise ValueError(f'recall_points must be positive, got {recall_points}')
        self.class_names = list(class_names) if class_names is not None else None
        self.iou_thresholds = [float(t) for t in iou_thresholds]
        self.recall_points = recall_points

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            predicted = _field(sample, 'pred_instances_3d')
            self.results.append(dict(
                boxes=box_tensor(_field(predicted, 'bboxes_3d')),
                scores=_field(predicted, 'scores_3d').detach().cpu().float().reshape(-1),
                labels=_field(predicted, 'labels_3d').detach().cpu().long().reshape(-1),
                gt_boxes=box_tensor(_field(sample, 'gt_bboxes_3d')),
                gt_labels=torch.as_tensor(_field(sample, 'gt_labels_3d')).cpu().long().reshape(-1)))

    def _class_names(self) -> List[str]:
        names = self.class_names
        if names is None and self.dataset_meta:
            names = self.dataset_meta.get('box_classes')
        if names is None:
            raise ValueError('DetectionAP needs class_names, or a dataset whose metainfo has box_classes')
        return list(names)

    def compute_metrics(self, results: list) -> dict:
        metrics = {}
        class_values = {(kind, threshold): [] for kind in OVERLAPS for threshold in self.iou_thresholds}
        for label, name in enumerate(self._class_names()):
            num_ground_truth = sum(int((frame['gt_labels'] == label).sum()) for frame in results)
            if num_ground_truth == 0:
                print_log(f'DetectionAP: no ground-truth box of class {name!r}; its AP is left out', 'current',
                          level=logging.WARNING)
                continue
            for kind, overlap in OVERLAPS.items():
                scores, hits = [], {threshold: [] for threshold in self.iou_thresholds}
                for frame in results:
                    mine = frame['labels'] == label
                    overlaps = overlap(frame['boxes'][mine], frame['gt_boxes'][frame['gt_labels'] == label])
                    scores.append(frame['scores'][mine])
                    for threshold in self.iou_thresholds:
                        hits[threshold].append(match_detections(overlaps, scores[-1], threshold))
                for threshold in self.iou_thresholds:
                    value = interpolated_average_precision(torch.cat(scores), torch.cat(hits[threshold]),
                                                           num_ground_truth, self.recall_points)
                    metrics[f'{name}_{kind}_AP@{threshold:g}'] = value
                    class_values[kind, threshold].append(value)
        for (kind, threshold), values in class_values.items():
            metrics[f'mean_{kind}_AP@{threshold:g}'] = sum(values) / len(values) if values else 0.0
        return metrics
