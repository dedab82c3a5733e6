"""DetectionAP: greedy matching, KITTI R40 interpolation, BEV and 3D AP per class."""
import pytest
import torch
from mmengine.structures import BaseDataElement, InstanceData

from sparsevision.evaluation import DetectionAP
from sparsevision.evaluation.detection import interpolated_average_precision, match_detections
from sparsevision.registry import METRICS


def car(x, y=0.0, z=-1.0, yaw=0.0):
    return [x, y, z, 4.0, 2.0, 1.5, yaw]


def frame(gt_boxes, gt_labels, boxes, scores, labels, as_dict=True):
    """One evaluated sample, as mmengine's evaluator passes it (a dict) or as a data element."""
    predicted = InstanceData(bboxes_3d=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7),
                             scores_3d=torch.tensor(scores, dtype=torch.float32),
                             labels_3d=torch.tensor(labels, dtype=torch.long))
    sample = BaseDataElement(gt_bboxes_3d=torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 7),
                             gt_labels_3d=torch.tensor(gt_labels, dtype=torch.long), pred_instances_3d=predicted)
    return sample.to_dict() if as_dict else sample


def evaluate(metric, frames):
    metric.process({}, frames)
    return metric.evaluate(len(frames))


def test_registered_and_builds():
    metric = METRICS.build(dict(type='DetectionAP', class_names=['vehicle']))
    assert isinstance(metric, DetectionAP)


def test_perfect_predictions_give_ap_one():
    gts = [[car(0), car(10, 5, yaw=1.0)], [car(-8, -3, yaw=-0.5)]]
    frames = [frame(g, [0] * len(g), g, [0.9] * len(g), [0] * len(g)) for g in gts]
    results = evaluate(DetectionAP(class_names=['vehicle']), frames)
    assert set(results) == {f'detection/{name}_{kind}_AP@{t}' for name in ('vehicle', 'mean')
                            for kind in ('BEV', '3D') for t in ('0.5', '0.7')}
    assert all(value == pytest.approx(1.0) for value in results.values())


def test_no_predictions_give_zero():
    frames = [frame([car(0)], [0], [], [], [])]
    results = evaluate(DetectionAP(class_names=['vehicle']), frames)
    assert all(value == 0.0 for value in results.values())


def test_hand_computed_precision_recall():
    # Scores 0.9 (hit), 0.8 (miss), 0.7 (hit) on 2 boxes: precision 1 up to recall 1/2, then 2/3 up to recall 1.
    gt = [car(0), car(20)]
    detections = [car(0.1), car(50), car(20.2)]
    results = evaluate(DetectionAP(class_names=['vehicle'], iou_thresholds=(0.5,)),
                       [frame(gt, [0, 0], detections, [0.9, 0.8, 0.7], [0, 0, 0])])
    assert results['detection/vehicle_BEV_AP@0.5'] == pytest.approx((20 * 1 + 20 * 2 / 3) / 40)
    assert interpolated_average_precision(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]), 2) == \
        pytest.approx((20 + 20 * 2 / 3) / 40)
    # Recall 1/3 at best: levels above it get precision 0.
    assert interpolated_average_precision(torch.tensor([0.5]), torch.tensor([True]), 3) == pytest.approx(13 / 40)


def test_3d_ap_sees_height_and_thresholds_differ():
    gt = [car(0)]
    shifted_up = [car(0, z=-0.4)]   # same footprint, z overlap 0.9 of 1.5: 3D IoU 0.43
    results = evaluate(DetectionAP(class_names=['vehicle']), [frame(gt, [0], shifted_up, [0.8], [0])])
    assert results['detection/vehicle_BEV_AP@0.7'] == pytest.approx(1.0)
    assert results['detection/vehicle_3D_AP@0.5'] == 0.0


def test_greedy_matching_takes_best_scores_first_and_each_box_once():
    overlaps = torch.tensor([[0.6, 0.0], [0.9, 0.0], [0.55, 0.52]])
    hits = match_detections(overlaps, torch.tensor([0.5, 0.9, 0.4]), threshold=0.5)
    assert hits.tolist() == [False, True, True]   # detection 1 takes box 0; 0 finds no free box; 2 takes box 1
    assert match_detections(torch.zeros(2, 0), torch.tensor([0.3, 0.2]), 0.5).tolist() == [False, False]


def test_frames_without_ground_truth_or_predictions():
    frames = [frame([car(0)], [0], [car(0)], [0.9], [0]),
              frame([], [], [car(5)], [0.95], [0]),          # no ground truth: a false positive above the hit
              frame([], [], [], [], []),                      # nothing at all
              frame([car(3, 3)], [0], [], [], [], as_dict=False)]   # a missed box
    results = evaluate(DetectionAP(class_names=['vehicle'], iou_thresholds=(0.5,)), frames)
    # Ranked: FP (0.95), TP (0.9); 2 boxes: precision 1/2 up to recall 1/2, nothing beyond.
    assert results['detection/vehicle_BEV_AP@0.5'] == pytest.approx(0.5 * 20 / 40)


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    frames = [frame([car(0)], [0], [car(0), car(9)], [0.9, 0.9], [0, 1])]
    metric = DetectionAP(iou_thresholds=(0.5,))
    metric.dataset_meta = dict(box_classes=('vehicle', 'cyclist'))
    results = evaluate(metric, frames)
    assert 'detection/cyclist_BEV_AP@0.5' not in results
    assert results['detection/mean_BEV_AP@0.5'] == pytest.approx(1.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='iou_thresholds'):
        DetectionAP(class_names=['vehicle'], iou_thresholds=(1.5,))
    metric = DetectionAP()
    with pytest.raises(ValueError, match='box_classes'):
        evaluate(metric, [frame([car(0)], [0], [], [], [])])
