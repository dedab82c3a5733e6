"""Top-k accuracy against hand-counted cases."""
import pytest
import torch

from sparsevision.evaluation import Accuracy


def test_topk_hand_counted():
    metric = Accuracy(topk=(1, 2))
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    labels = [0, 1, 1, 0]  # top1 hits: yes, no, no, no; top2 hits: yes, yes, yes, no
    metric.process({}, [dict(pred_score=s, gt_label=torch.tensor(l)) for s, l in zip(scores, labels)])
    assert metric.compute_metrics(metric.results) == pytest.approx({'top1': 25.0, 'top2': 75.0})


def test_bad_topk():
    with pytest.raises(ValueError, match='topk'):
        Accuracy(topk=(0,))
