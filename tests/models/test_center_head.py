"""CenterHead targets and decoding, BEVNeck, and the CenterPoint detector on hand-made sparse scenes."""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.structures import BaseDataElement

from sparsevision.models.heads.center_head import CenterHead, gaussian_focal_loss, gaussian_radius
from sparsevision.registry import MODELS
from sparsevision.sparse import SparseTensor

VOXEL_SIZE = (0.25, 0.25, 0.5)
POINT_CLOUD_RANGE = (-8.0, -8.0, -3.0, 8.0, 8.0, 1.0)   # grid (D, H, W) = (8, 64, 64)
STRIDE = 4                                                # BEV map 16 x 16 cells of 1 m


class DenseBEVStandIn(nn.Module):
    """Stand-in backbone: SparseTensor -> dense -> height folded into channels -> a stride-4 convolution."""

    def __init__(self, in_channels=4, depth=8, out_channels=16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels * depth, out_channels, STRIDE, stride=STRIDE)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        dense = x.dense()
        return self.conv(dense.flatten(1, 2))


def make_head(**options):
    return CenterHead(in_channels=16, num_classes=2, voxel_size=VOXEL_SIZE, point_cloud_range=POINT_CLOUD_RANGE,
                      out_size_factor=STRIDE, **options)


def make_detector(**head_options):
    return MODELS.build(dict(
        type='CenterPoint', backbone=DenseBEVStandIn(), voxel_size=VOXEL_SIZE, point_cloud_range=POINT_CLOUD_RANGE,
        neck=dict(type='BEVNeck', in_channels=16, block_channels=(16, 16), block_depths=(1, 1),
                  block_strides=(1, 2), upsample_strides=(1, 2), upsample_channels=(16, 16)),
        head=dict(type='CenterHead', in_channels=32, num_classes=1, out_size_factor=STRIDE, head_channels=16,
                  **head_options)))


def scene(boxes, generator, points_per_box=300):
    """Voxels of points filling each box plus flat ground: ``coordinates (z, y, x)``, ``features (x, y, z, 1)``."""
    points = [torch.cat([torch.rand(2000, 2, generator=generator) * 16 - 8, torch.full((2000, 1), -1.8)], dim=1)]
    for x, y, z, dx, dy, dz, yaw in boxes.tolist():
        local = (torch.rand(points_per_box, 3, generator=generator) - 0.5) * torch.tensor([dx, dy, dz])
        cos, sin = math.cos(yaw), math.sin(yaw)
        points.append(torch.stack([x + local[:, 0] * cos - local[:, 1] * sin,
                                   y + local[:, 0] * sin + local[:, 1] * cos, z + local[:, 2]], dim=1))
    points = torch.cat(points)
    low, size = torch.tensor(POINT_CLOUD_RANGE[:3]), torch.tensor(VOXEL_SIZE)
    cells = ((points - low) / size).floor().long()
    inside = ((cells >= 0) & (cells < torch.tensor([64, 64, 8]))).all(dim=1)
    coordinates, first = torch.unique(cells[inside].flip(1), dim=0, return_inverse=True)
    sums = torch.zeros(coordinates.shape[0], 3).index_add_(0, first, points[inside])
    features = sums / torch.bincount(first, minlength=coordinates.shape[0])[:, None]
    return coordinates.int(), torch.cat([features, torch.ones(features.shape[0], 1)], dim=1)


def batch(scenes):
    indices = torch.cat([torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], dim=1)
                         for b, (c, _) in enumerate(scenes)])
    return SparseTensor(torch.cat([f for _, f in scenes]), indices, [8, 64, 64], len(scenes))


BOXES = [torch.tensor([[2.3, 3.6, -1.0, 4.0, 1.8, 1.5, 0.3], [-4.4, -3.1, -1.1, 4.5, 2.0, 1.6, -2.0]]),
         torch.tensor([[5.2, -5.7, -0.9, 3.8, 1.7, 1.4, 1.2]])]


def test_gaussian_radius_and_focal_loss():
    radius = gaussian_radius(torch.tensor([10.0, 5.0, 20.0]), torch.tensor([10.0, 2.0, 8.0]), 0.7)
    # 10 x 10 at IoU 0.7: the third case, (-2 * 0.7 * 20 + sqrt((2 * 0.7 * 20) ** 2 + 4 * 2.8 * 30)) / 2.
    assert radius[0].item() == pytest.approx((-28 + math.sqrt(784 + 336)) / 2, rel=1e-6)
    assert radius[1] < radius[0] < radius[2]
    targets = torch.tensor([[1.0, 0.5, 0.0]])
    good, bad = torch.tensor([[6.0, -6.0, -6.0]]), torch.tensor([[-6.0, 6.0, 6.0]])
    assert gaussian_focal_loss(good, targets) < 0.01 < gaussian_focal_loss(bad, targets)


def test_targets_peak_at_box_centres():
    head = make_head()
    gt_labels = [torch.tensor([0, 1]), torch.tensor([1])]
    targets = head.get_targets(BOXES, gt_labels)
    assert targets.heatmap.shape == (2, 2, 16, 16)
    peaks = (targets.heatmap == 1).nonzero().tolist()
    # Cells of 1 m from -8 m: column floor(x + 8), row floor(y + 8).
    assert sorted(peaks) == sorted([[0, 0, 11, 10], [0, 1, 4, 3], [1, 1, 2, 13]])
    assert targets.batch_index.tolist() == [0, 0, 1]
    assert targets.cell_index.tolist() == [11 * 16 + 10, 4 * 16 + 3, 2 * 16 + 13]
    torch.testing.assert_close(targets.regression[0], torch.tensor(
        [0.3, 0.6, -1.0, math.log(4.0), math.log(1.8), math.log(1.5), math.sin(0.3), math.cos(0.3)]),
        atol=1e-5, rtol=0)
    # A Gaussian of radius min_radius = 2 around each peak, nothing of its class elsewhere.
    assert targets.heatmap[0, 0, 11, 12].item() == pytest.approx(math.exp(-4 / (2 * (5 / 6) ** 2)), rel=1e-5)
    assert targets.heatmap[0, 0, 11, 13] == 0 and targets.heatmap[1, 0].sum() == 0
    with pytest.raises(ValueError, match=r'gt_labels_3d must lie in \[0, 2\)'):
        head.get_targets(BOXES, [torch.tensor([0, 2]), torch.tensor([1])])


def test_loss_on_a_batch_where_one_frame_has_no_boxes():
    head = make_head()
    features = torch.randn(2, 16, 16, 16, requires_grad=True)
    losses = head.loss(features, [BOXES[0], torch.zeros(0, 7)], [torch.zeros(len(BOXES[0]), dtype=torch.long),
                                                                 torch.zeros(0, dtype=torch.long)])
    assert losses['loss_bbox'] > 0 and torch.isfinite(losses['loss_heatmap'])
    sum(losses.values()).backward()
    assert features.grad[1].abs().sum() > 0   # the empty frame still learns its background


def test_loss_on_frames_without_boxes_is_finite():
    head = make_head()
    losses = head.loss(torch.randn(2, 16, 16, 16), [torch.zeros(0, 7), torch.zeros(0, 7)],
                       [torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)])
    assert losses['loss_bbox'] == 0 and torch.isfinite(losses['loss_heatmap'])
    sum(losses.values()).backward()


def test_encode_decode_round_trip_is_exact():
    head = make_head(score_threshold=0.5)
    gt_labels = [torch.tensor([0, 1]), torch.tensor([1])]
    targets = head.get_targets(BOXES, gt_labels)
    logits = torch.logit(targets.heatmap.clamp(1e-6, 1 - 1e-6))
    regression = torch.zeros(2, 8, 16 * 16)
    regression[targets.batch_index, :, targets.cell_index] = targets.regression
    decoded = head.decode(logits, regression.view(2, 8, 16, 16))
    for detections, boxes, labels in zip(decoded, BOXES, gt_labels):
        order = detections.labels_3d.argsort()
        torch.testing.assert_close(detections.bboxes_3d[order], boxes, atol=1e-5, rtol=0)
        assert detections.labels_3d[order].tolist() == labels.tolist()
        torch.testing.assert_close(detections.scores_3d, torch.ones(len(boxes)), atol=1e-5, rtol=0)


def test_heading_agnostic_round_trip_recovers_the_box_axis():
    head = make_head(score_threshold=0.5, heading_agnostic=True)
    boxes = [BOXES[0].clone()]
    boxes[0][:, 6] = torch.tensor([0.3, math.pi - 0.2])   # the second decodes as -0.2: the same box
    targets = head.get_targets(boxes, [torch.tensor([0, 0])])
    regression = torch.zeros(1, 8, 16 * 16)
    regression[targets.batch_index, :, targets.cell_index] = targets.regression
    detections = head.decode(torch.logit(targets.heatmap.clamp(1e-6, 1 - 1e-6)), regression.view(1, 8, 16, 16))[0]
    expected = boxes[0].clone()
    expected[1, 6] = -0.2
    torch.testing.assert_close(detections.bboxes_3d[detections.bboxes_3d[:, 0].argsort(descending=True)], expected,
                               atol=1e-5, rtol=0)


def test_decoding_suppresses_overlaps_and_caps_detections():
    head = make_head(score_threshold=0.2, max_detections=1)
    logits = torch.full((1, 2, 16, 16), -9.0)
    logits[0, 0, 5, 5], logits[0, 0, 5, 7], logits[0, 1, 9, 9] = 3.0, 2.0, 1.0
    regression = torch.zeros(1, 8, 16, 16)
    regression[:, 3:6] = math.log(4.0)   # 4 m cubes: the two class-0 peaks 2 m apart overlap by 1/3
    regression[:, 7] = 1.0
    assert len(head.decode(logits, regression)[0]) == 1
    head.max_detections, head.nms_iou_threshold = 10, 0.2
    detections = head.decode(logits, regression)[0]
    assert detections.labels_3d.tolist() == [0, 1]
    # Offsets 0: the boxes sit on the corners of their cells (1 m cells from -8 m).
    torch.testing.assert_close(detections.bboxes_3d[:, :2], torch.tensor([[-3.0, -3.0], [1.0, 1.0]]))


def test_bev_neck_shapes_and_errors():
    neck = MODELS.build(dict(type='BEVNeck', in_channels=8, block_channels=(8, 16, 16), block_depths=(0, 1, 1),
                             block_strides=(2, 2, 2), upsample_strides=(1, 2, 4), upsample_channels=(4, 4, 8)))
    assert neck.out_channels == 16 and neck.stride == 2
    assert neck(torch.randn(1, 8, 33, 30)).shape == (1, 16, 17, 15)
    with pytest.raises(ValueError, match='same stride'):
        MODELS.build(dict(type='BEVNeck', in_channels=8, block_strides=(1, 2), upsample_strides=(1, 1)))
    with pytest.raises(ValueError, match='one entry per block'):
        MODELS.build(dict(type='BEVNeck', in_channels=8, block_channels=(8,)))


def test_loss_decreases_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = make_detector()
    inputs = batch([scene(boxes, generator) for boxes in BOXES])
    samples = [BaseDataElement(gt_bboxes_3d=boxes, gt_labels_3d=torch.zeros(len(boxes), dtype=torch.long))
               for boxes in BOXES]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(inputs, samples, mode='loss')
        total = sum(loss.values())
        assert set(loss) == {'loss_heatmap', 'loss_bbox'} and torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    predicted = model(inputs, [BaseDataElement() for _ in BOXES], mode='predict')
    for sample in predicted:
        detections = sample.pred_instances_3d
        assert detections.bboxes_3d.shape[1] == 7 and detections.bboxes_3d.dtype == torch.float32
        assert detections.scores_3d.shape == detections.labels_3d.shape == (len(detections),)
        assert detections.labels_3d.dtype == torch.long
        assert (detections.scores_3d[:-1] >= detections.scores_3d[1:]).all()
    heatmap, regression = model(inputs, mode='tensor')
    assert heatmap.shape == (2, 1, 16, 16) and regression.shape == (2, 8, 16, 16)


def test_data_preprocessor_batches_packed_samples():
    generator = torch.Generator().manual_seed(1)
    model = make_detector()
    packed = [dict(coordinates=c, features=f, spatial_shape=[8, 64, 64])
              for c, f in (scene(boxes, generator) for boxes in BOXES)]
    data = model.data_preprocessor(dict(inputs=packed, data_samples=None))
    assert isinstance(data['inputs'], SparseTensor) and data['inputs'].batch_size == 2


def test_bad_geometry_raises_clear_errors():
    model = make_detector()
    generator = torch.Generator().manual_seed(2)
    coordinates, features = scene(BOXES[0], generator)
    wrong_grid = SparseTensor(features, torch.cat([torch.zeros_like(coordinates[:, :1]), coordinates], dim=1),
                              [8, 64, 80], 1)
    with pytest.raises(ValueError, match='same voxel_size and point_cloud_range in the Voxelize transform'):
        model(wrong_grid, mode='tensor')
    with pytest.raises(ValueError, match='out_size_factor'):
        make_head()(torch.randn(1, 16, 8, 8))
    heatmap, _ = make_head()(torch.randn(1, 16, 17, 18))   # a neck's extra row / column past the range: cropped
    assert heatmap.shape[2:] == (16, 16)
    with pytest.raises(ValueError, match='leave voxel_size out of the head config'):
        MODELS.build(dict(type='CenterPoint', backbone=DenseBEVStandIn(), voxel_size=VOXEL_SIZE,
                          point_cloud_range=POINT_CLOUD_RANGE,
                          head=dict(type='CenterHead', in_channels=16, num_classes=1, out_size_factor=STRIDE,
                                    voxel_size=(0.5, 0.5, 0.5))))
    with pytest.raises(ValueError, match='voxel_size'):
        CenterHead(in_channels=16, num_classes=1, voxel_size=(0.2, 0.2), point_cloud_range=POINT_CLOUD_RANGE,
                   out_size_factor=STRIDE)
    with pytest.raises(ValueError, match='gt_bboxes_3d'):
        model(batch([scene(BOXES[0], generator)]), [BaseDataElement()], mode='loss')


def test_builds_with_sparse_encoder_from_config():
    model = MODELS.build(dict(
        type='CenterPoint', voxel_size=VOXEL_SIZE, point_cloud_range=POINT_CLOUD_RANGE,
        backbone=dict(type='SparseEncoder', in_channels=4, sparse_shape=[9, 64, 64], base_channels=8,
                      output_channels=16, encoder_channels=((8,), (8, 8), (16, 16)),
                      encoder_paddings=((1,), (1, 1), (1, 1))),   # height 9 -> 5 -> 3 -> 1, BEV stride 4
        neck=dict(type='BEVNeck', in_channels=16, block_channels=(16,), block_depths=(1,), block_strides=(1,),
                  upsample_strides=(1,), upsample_channels=(16,)),
        head=dict(type='CenterHead', in_channels=16, num_classes=1, out_size_factor=STRIDE, head_channels=8)))
    generator = torch.Generator().manual_seed(3)
    heatmap, regression = model(batch([scene(BOXES[0], generator)]), mode='tensor')
    assert heatmap.shape == (1, 1, 16, 16) and regression.shape == (1, 8, 16, 16)
