"""Top-k classification accuracy."""
from typing import Sequence

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``accuracy/top1`` etc.

    Args:
        topk: the k values to report.
        collect_device: ``'cpu'`` or ``'gpu'`` for gathering across processes.
        prefix: key prefix of the results.
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: Sequence[int] = (1,), collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not topk or min(topk) < 1:
            raise ValueError(f'topk must be positive integers, got {topk}')
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append((sample['pred_score'].cpu(), int(sample['gt_label'])))

    def compute_metrics(self, results: list) -> dict:
        scores = torch.stack([score for score, _ in results])
        labels = torch.tensor([label for _, label in results])
        ranked = scores.topk(min(max(self.topk), scores.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        return {f'top{k}': hits[:, :k].any(dim=1).float().mean().item() * 100 for k in self.topk}
