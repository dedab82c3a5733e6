"""MeanIoU per site and per point, and the site-to-point label transfer of SparseSegmentor."""
import pytest
import torch

from sparsevision.evaluation import MeanIoU
from sparsevision.models.segmentors.sparse_segmentor import point_labels


def evaluate(metric, samples):
    metric.process(None, samples)
    return metric.compute_metrics(metric.results)


def test_site_level_hand_counted():
    metric = MeanIoU(num_classes=2)
    scores = evaluate(metric, [dict(pred_seg=torch.tensor([0, 0, 1, 1]), gt_seg=torch.tensor([0, 1, 1, 1]))])
    assert scores['IoU_0'] == pytest.approx(50.0)          # 1 hit / (2 predicted + 1 true - 1)
    assert scores['IoU_1'] == pytest.approx(200 / 3)       # 2 hits / (2 + 3 - 2)
    assert scores['accuracy'] == pytest.approx(75.0)


def test_point_level_counts_points_outside_the_grid_as_misses_and_skips_ignored():
    metric = MeanIoU(num_classes=2, level='point', ignore_index=255)
    sample = dict(pred_point_seg=torch.tensor([0, -1, 1, 1]), gt_point_seg=torch.tensor([0, 0, 1, 255]))
    scores = evaluate(metric, [sample])
    assert scores['IoU_0'] == pytest.approx(50.0)   # the point predicted -1 is a true 0 not found
    assert scores['IoU_1'] == pytest.approx(100.0)
    assert scores['accuracy'] == pytest.approx(200 / 3)


def test_point_labels_follow_their_sites():
    sites = torch.tensor([3, 1, 2])
    assert point_labels(sites, torch.tensor([2, 2, -1, 0, 1])).tolist() == [2, 2, -1, 3, 1]


@pytest.mark.parametrize('sample, message', [
    (dict(pred_seg=torch.tensor([0])), 'needs pred_seg and gt_seg'),
    (dict(pred_seg=torch.tensor([0]), gt_seg=torch.tensor([5])), r'must lie in \[0, 2\)'),
    (dict(pred_seg=torch.tensor([0, 1]), gt_seg=torch.tensor([0])), '2 predicted labels for 1'),
])
def test_bad_samples_raise(sample, message):
    with pytest.raises(ValueError, match=message):
        MeanIoU(num_classes=2).process(None, [sample])


def test_bad_level_raises():
    with pytest.raises(ValueError, match="level must be 'site' or 'point'"):
        MeanIoU(num_classes=2, level='voxel')
