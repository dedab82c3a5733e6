"""Segmentation metrics per site or per point: mean intersection over union and accuracy."""
from typing import Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


@METRICS.register_module()
class MeanIoU(BaseMetric):
    """mIoU over the classes present in labels or predictions, per-class IoU and site accuracy, in percent.

    Reported as ``segmentation/mIoU``, ``segmentation/accuracy`` and ``segmentation/IoU_<class>``.

    Args:
        num_classes: number of classes.
        class_names: names used in the per-class keys (default: indices).
        level: ``'site'`` compares ``pred_seg`` with ``gt_seg`` (one label per voxel); ``'point'`` compares
            ``pred_point_seg`` with ``gt_point_seg`` (one label per input point), as point-cloud benchmarks do.
        ignore_index: ground-truth label left out of the scores (points outside the grid are predicted -1 and
            count as wrong).
        collect_device: ``'cpu'`` or ``'gpu'`` for gathering across processes.
        prefix: key prefix of the results.
    """

    default_prefix = 'segmentation'

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, level: str = 'site',
                 ignore_index: int = -1, collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if level not in ('site', 'point'):
            raise ValueError(f"level must be 'site' or 'point', got {level!r}")
        self.level = level
        self.prediction_key, self.truth_key = (('pred_seg', 'gt_seg') if level == 'site'
                                               else ('pred_point_seg', 'gt_point_seg'))
        self.ignore_index = ignore_index
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if self.prediction_key not in sample or self.truth_key not in sample:
                raise ValueError(f'MeanIoU needs {self.prediction_key} and {self.truth_key} in each sample '
                                 f'(level={self.level!r})')
            predicted, truth = sample[self.prediction_key].cpu().long(), sample[self.truth_key].cpu().long()
            if predicted.shape != truth.shape:
                raise ValueError(f'{predicted.shape[0]} predicted labels for {truth.shape[0]} ground-truth labels')
            scored = truth != self.ignore_index
            predicted, truth = predicted[scored], truth[scored]
            if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
                raise ValueError(f'ground-truth labels must lie in [0, {self.num_classes}) or equal ignore_index '
                                 f'({self.ignore_index}), got {truth.min().item()}..{truth.max().item()}')
            # a prediction outside the classes (-1: point outside the grid) is a miss: counted in its own column
            predicted = torch.where((predicted >= 0) & (predicted < self.num_classes), predicted, self.num_classes)
            self.results.append(torch.bincount(truth * (self.num_classes + 1) + predicted,
                                               minlength=self.num_classes * (self.num_classes + 1))
                                .reshape(self.num_classes, -1))

    def compute_metrics(self, results: list) -> dict:
        confusion = torch.stack(results).sum(dim=0).double()
        hits = confusion.diag()
        union = confusion[:, :self.num_classes].sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0
        iou = torch.where(present, hits / union.clamp(min=1), torch.zeros_like(hits))
        metrics = {'mIoU': iou[present].mean().item() * 100, 'accuracy': (hits.sum() / confusion.sum()).item() * 100}
        metrics.update({f'IoU_{name}': value.item() * 100 for name, value, seen in
                        zip(self.class_names, iou, present) if seen})
        return metrics
