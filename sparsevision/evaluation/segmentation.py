"""Per-site segmentation metrics: mean intersection over union and accuracy."""
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
        collect_device: ``'cpu'`` or ``'gpu'`` for gathering across processes.
        prefix: key prefix of the results.
    """

    default_prefix = 'segmentation'

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, collect_device: str = 'cpu',
                 prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            predicted, truth = sample['pred_seg'].cpu().long(), sample['gt_seg'].cpu().long()
            if predicted.shape != truth.shape:
                raise ValueError(f'{predicted.shape[0]} predicted labels for {truth.shape[0]} ground-truth labels')
            self.results.append(torch.bincount(truth * self.num_classes + predicted,
                                               minlength=self.num_classes ** 2).reshape(self.num_classes, -1))

    def compute_metrics(self, results: list) -> dict:
        confusion = torch.stack(results).sum(dim=0).double()
        hits = confusion.diag()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0
        iou = torch.where(present, hits / union.clamp(min=1), torch.zeros_like(hits))
        metrics = {'mIoU': iou[present].mean().item() * 100, 'accuracy': (hits.sum() / confusion.sum()).item() * 100}
        metrics.update({f'IoU_{name}': value.item() * 100 for name, value, seen in
                        zip(self.class_names, iou, present) if seen})
        return metrics
