"""Point-cloud transforms: boxes follow points, voxelisation matches a brute-force numpy one, packing."""
from collections import Counter

import numpy as np
import pytest
import torch

from sparsevision.datasets.transforms import (ObjectRangeFilter, PackPointCloudInputs, PointSample, PointsRangeFilter,
                                              RandomFlip, RandomJitter, RandomRotation, RandomScale, Voxelize)
from sparsevision.datasets.transforms.point_cloud import majority_labels

RANGE = (-20.0, -20.0, -3.0, 20.0, 20.0, 3.0)


def points_in_box(xyz, box, margin=1e-4):
    """Whether each point lies inside the (x, y, z, dx, dy, dz, yaw) box, grown by ``margin``."""
    offset = xyz - box[:3]
    cosine, sine = np.cos(box[6]), np.sin(box[6])
    local = np.stack([cosine * offset[:, 0] + sine * offset[:, 1], -sine * offset[:, 0] + cosine * offset[:, 1],
                      offset[:, 2]], axis=1)
    return (np.abs(local) <= np.asarray(box[3:6]) / 2 + margin).all(axis=1)


def boxed_sample(seed=0):
    """Three boxes with 40 points each inside (label 1 + box) and 100 background points (label 0)."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[5.0, 2.0, -1.0, 4.5, 1.9, 1.6, 0.3], [-8.0, 6.0, -0.8, 4.0, 1.8, 1.5, -2.9],
                      [3.0, -9.0, -1.1, 4.8, 2.0, 1.4, 1.6]], dtype=np.float32)
    clouds, labels = [], []
    for index, box in enumerate(boxes):
        local = rng.uniform(-0.49, 0.49, size=(40, 3)) * box[3:6]
        cosine, sine = np.cos(box[6]), np.sin(box[6])
        xyz = np.stack([cosine * local[:, 0] - sine * local[:, 1], sine * local[:, 0] + cosine * local[:, 1],
                        local[:, 2]], axis=1) + box[:3]
        clouds.append(xyz)
        labels.append(np.full(40, index + 1))
    clouds.append(rng.uniform(-15, 15, size=(100, 3)))
    labels.append(np.zeros(100, dtype=np.int64))
    xyz = np.concatenate(clouds)
    points = np.concatenate([xyz, rng.random((len(xyz), 1))], axis=1).astype(np.float32)
    return dict(points=points, pts_semantic_mask=np.concatenate(labels).astype(np.int64), gt_bboxes_3d=boxes,
                gt_labels_3d=np.zeros(3, dtype=np.int64), sample_index=7)


def assert_points_stay_in_their_boxes(sample):
    assert sample['gt_bboxes_3d'].dtype == np.float32 and sample['points'].dtype == np.float32
    assert (np.abs(sample['gt_bboxes_3d'][:, 6]) <= np.pi).all()
    for index, box in enumerate(sample['gt_bboxes_3d']):
        inside = sample['points'][sample['pts_semantic_mask'] == index + 1, :3]
        assert points_in_box(inside, box).all()


@pytest.mark.parametrize('transform', [
    RandomRotation(), RandomRotation((-np.pi, np.pi)), RandomFlip(ratio=1.0), RandomFlip(('vertical',), ratio=1.0),
    RandomScale((0.8, 1.2)),
])
def test_boxes_follow_points(transform):
    np.random.seed(0)
    for seed in range(3):
        sample = transform(boxed_sample(seed))
        assert_points_stay_in_their_boxes(sample)


def test_flip_and_rotation_yaw_rules():
    sample = RandomFlip(('horizontal',), ratio=1.0)(boxed_sample())
    np.testing.assert_allclose(sample['gt_bboxes_3d'][:, 6], [-0.3, 2.9, -1.6], atol=1e-6)   # y -> -y
    sample = RandomFlip(('vertical',), ratio=1.0)(boxed_sample())
    np.testing.assert_allclose(sample['gt_bboxes_3d'][:, 6], [np.pi - 0.3, np.pi + 2.9 - 2 * np.pi, np.pi - 1.6],
                               atol=1e-6)   # x -> -x
    assert RandomFlip(ratio=0.0)(boxed_sample())['points'].tolist() == boxed_sample()['points'].tolist()
    np.random.seed(3)
    rotated = RandomRotation((0.5, 0.5))(boxed_sample())
    np.testing.assert_allclose(rotated['gt_bboxes_3d'][:, 6], [0.8, -2.4, 2.1], atol=1e-6)


def test_random_transforms_are_reproducible_under_the_global_seed():
    pipeline = [RandomFlip(), RandomRotation(), RandomScale(), RandomJitter(), PointSample(150)]
    outputs = []
    for _ in range(2):
        np.random.seed(42)
        sample = boxed_sample()
        for transform in pipeline:
            sample = transform(sample)
        outputs.append(sample)
    np.testing.assert_array_equal(outputs[0]['points'], outputs[1]['points'])
    np.testing.assert_array_equal(outputs[0]['gt_bboxes_3d'], outputs[1]['gt_bboxes_3d'])
    assert_points_stay_in_their_boxes(PointSample(150)(RandomScale()(RandomRotation()(boxed_sample()))))


def test_scale_scales_centres_and_sizes():
    sample = RandomScale((2.0, 2.0))(boxed_sample())
    np.testing.assert_allclose(sample['gt_bboxes_3d'][:, :6], boxed_sample()['gt_bboxes_3d'][:, :6] * 2)
    np.testing.assert_allclose(sample['points'][:, 3], boxed_sample()['points'][:, 3])   # features untouched


def test_jitter_is_clipped_and_leaves_boxes():
    np.random.seed(0)
    sample = RandomJitter(std=1.0, clip=0.05)(boxed_sample())
    shift = sample['points'][:, :3] - boxed_sample()['points'][:, :3]
    assert np.abs(shift).max() <= 0.05 + 1e-6 and np.abs(shift).max() > 0.04
    assert np.array_equal(sample['gt_bboxes_3d'], boxed_sample()['gt_bboxes_3d'])


def test_range_filters_keep_masks_and_labels_aligned():
    sample = boxed_sample()
    sample['points'][:3, :3] = [[-20.0, 0, 0], [20.0, 0, 0], [0, 0, 2.999]]   # min is in, max is out
    original = sample['points'].copy()
    filtered = PointsRangeFilter((-20, -20, -3, 20, 20, 3))(dict(sample))
    xyz = original[:, :3]
    keep = ((xyz >= (-20, -20, -3)) & (xyz < (20, 20, 3))).all(axis=1)
    assert not keep[1] and keep[0] and keep[2]
    np.testing.assert_array_equal(filtered['points'], original[keep])
    np.testing.assert_array_equal(filtered['pts_semantic_mask'], sample['pts_semantic_mask'][keep])
    boxes = ObjectRangeFilter((-10, -5, -3, 10, 5, 3))(boxed_sample())
    np.testing.assert_array_equal(boxes['gt_bboxes_3d'], boxed_sample()['gt_bboxes_3d'][:1])
    assert boxes['gt_labels_3d'].shape == (1,)


def test_point_sample_draws_exact_counts_with_aligned_masks():
    np.random.seed(0)
    fewer = PointSample(100)(boxed_sample())
    assert len(fewer['points']) == 100 == len(fewer['pts_semantic_mask'])
    assert len(np.unique(fewer['points'], axis=0)) == 100   # no repeats when the cloud has enough points
    more = PointSample(500)(boxed_sample())
    assert len(more['points']) == 500 and len(np.unique(more['points'], axis=0)) <= 220
    for sample in (fewer, more):
        original = boxed_sample()
        rows = [np.flatnonzero((original['points'] == row).all(axis=1))[0] for row in sample['points']]
        np.testing.assert_array_equal(original['pts_semantic_mask'][rows], sample['pts_semantic_mask'])


def brute_force_voxels(points, voxel_size, point_cloud_range):
    """Occupied cells (z, y, x) in lexicographic order, the mean of their points, and each point's cell row."""
    low, size = np.asarray(point_cloud_range[:3]), np.asarray(voxel_size)
    shape = np.round((np.asarray(point_cloud_range[3:]) - low) / size).astype(np.int64)
    cells = np.floor((points[:, :3].astype(np.float64) - low) / size).astype(np.int64)
    inside = ((cells >= 0) & (cells < shape)).all(axis=1)
    cells_zyx = [tuple(cell[::-1]) for cell in cells]
    occupied = sorted({cell for cell, kept in zip(cells_zyx, inside) if kept})
    row = {cell: index for index, cell in enumerate(occupied)}
    point_to_voxel = np.array([row[cell] if kept else -1 for cell, kept in zip(cells_zyx, inside)])
    means = np.stack([points[point_to_voxel == index].astype(np.float64).mean(axis=0) for index in range(len(row))])
    return np.array(occupied), means, point_to_voxel, shape[::-1]


def test_voxelize_matches_brute_force():
    sample = boxed_sample()
    sample['points'][:5, :3] = [[30.0, 0, 0], [0, -21, 0], [0, 0, 3.5], [0, 0, -3.0], [19.99, 19.99, 2.99]]
    voxel_size = (0.5, 0.5, 0.25)
    out = Voxelize(voxel_size, RANGE)(sample)
    coordinates, means, point_to_voxel, shape = brute_force_voxels(sample['points'], voxel_size, RANGE)
    assert out['coordinates'].dtype == np.int32 and out['features'].dtype == np.float32
    assert out['point_to_voxel'].dtype == np.int64 and out['gt_seg'].dtype == np.int64
    np.testing.assert_array_equal(out['coordinates'], coordinates)
    np.testing.assert_allclose(out['features'], means, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out['point_to_voxel'], point_to_voxel)
    assert out['point_to_voxel'][:3].tolist() == [-1, -1, -1]
    assert out['spatial_shape'] == shape.tolist() == [24, 80, 80]
    assert out['voxel_size'] == list(voxel_size) and out['point_cloud_range'] == list(RANGE)
    kept = out['point_to_voxel'] >= 0   # every kept point lies in the cell its voxel names
    cells = np.floor((sample['points'][kept, :3] - np.asarray(RANGE[:3])) / voxel_size).astype(np.int64)
    np.testing.assert_array_equal(out['coordinates'][out['point_to_voxel'][kept]], cells[:, ::-1])
    for voxel in range(len(coordinates)):   # majority label, smallest on ties
        votes = Counter(sample['pts_semantic_mask'][point_to_voxel == voxel].tolist())
        top = max(votes.values())
        assert out['gt_seg'][voxel] == min(label for label, count in votes.items() if count == top)


def test_majority_labels_break_ties_to_the_smallest_label():
    labels = np.array([2, 1, 1, 2, 0, 3, 3])
    point_to_voxel = np.array([0, 0, 1, 1, 1, -1, 2])
    assert majority_labels(labels, point_to_voxel, 3).tolist() == [1, 0, 3]
    with pytest.raises(ValueError, match='aligned'):
        majority_labels(labels[:3], point_to_voxel, 3)


def test_voxelize_with_every_point_outside_the_range_says_so():
    sample = boxed_sample()
    sample['points'][:, 0] += 100.0
    with pytest.raises(ValueError, match=r'all 220 points of sample 7 lie outside point_cloud_range \[-20.0.*'
                                         'points outside the configured range'):
        Voxelize((0.5, 0.5, 0.5), RANGE)(sample)


def test_pack_carries_boxes_labels_and_point_maps():
    sample = Voxelize((0.5, 0.5, 0.5), RANGE)(boxed_sample())
    sample['lidar_path'] = 'scan.bin'
    packed = PackPointCloudInputs()(sample)
    inputs, data_sample = packed['inputs'], packed['data_samples']
    assert inputs['coordinates'].dtype == torch.int32 and inputs['features'].dtype == torch.float32
    assert inputs['spatial_shape'] == [12, 80, 80]
    assert data_sample.gt_bboxes_3d.dtype == torch.float32 and data_sample.gt_bboxes_3d.shape == (3, 7)
    assert data_sample.gt_labels_3d.dtype == torch.long and data_sample.gt_labels_3d.shape == (3,)
    assert data_sample.point_to_voxel.dtype == torch.long and data_sample.point_to_voxel.shape == (220,)
    assert data_sample.gt_point_seg.dtype == torch.long and data_sample.gt_point_seg.shape == (220,)
    assert data_sample.gt_seg.shape == (len(inputs['coordinates']),)
    assert data_sample.metainfo == dict(sample_index=7, lidar_path='scan.bin', voxel_size=[0.5, 0.5, 0.5],
                                        point_cloud_range=list(RANGE))


@pytest.mark.parametrize('build, message', [
    (lambda: RandomFlip(('diagonal',)), 'directions'),
    (lambda: RandomFlip(ratio=1.5), 'ratio'),
    (lambda: RandomScale((1.1, 0.9)), 'low <= high'),
    (lambda: RandomScale((0.0, 1.0)), 'positive'),
    (lambda: PointsRangeFilter((0, 0, 0, 1, 1)), '6 finite numbers'),
    (lambda: ObjectRangeFilter((0, 0, 0, -1, 1, 1)), 'min < max'),
    (lambda: PointSample(0), 'num_points'),
    (lambda: Voxelize((0.1, 0.1), RANGE), 'voxel_size needs 3 values'),
])
def test_bad_arguments_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_select_point_columns_keeps_the_listed_columns_in_order():
    from sparsevision.datasets.transforms import SelectPointColumns

    points = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert SelectPointColumns((0, 1, 2, 5))(dict(points=points))['points'].tolist() == [[0, 1, 2, 5], [6, 7, 8, 11]]
    with pytest.raises(ValueError, match='wants column 6 but the points have 6 columns'):
        SelectPointColumns((0, 1, 2, 6))(dict(points=points))
    with pytest.raises(ValueError, match='must list x, y, z'):
        SelectPointColumns((0, 1))


def test_boxes_with_extra_columns_keep_their_seven_box_columns():
    """nuScenes-style [M, 9] boxes (velocities last) are not scrambled: the box columns survive, extras drop."""
    from sparsevision.datasets.transforms import ObjectRangeFilter

    boxes = np.arange(7 * 9, dtype=np.float32).reshape(7, 9) / 10
    results = ObjectRangeFilter([-100, -100, -5, 100, 100, 5])(dict(points=np.zeros((1, 3), np.float32),
                                                                     gt_bboxes_3d=boxes))
    assert np.array_equal(results['gt_bboxes_3d'], boxes[:, :7])
    packed = PackPointCloudInputs()(dict(coordinates=np.zeros((1, 3), np.int32), features=np.zeros((1, 3)),
                                         spatial_shape=[1, 1, 1], gt_bboxes_3d=boxes))
    assert torch.equal(packed['data_samples'].gt_bboxes_3d, torch.from_numpy(boxes[:, :7]))
    with pytest.raises(ValueError, match=r'must be \[M, 7\] boxes'):
        ObjectRangeFilter([-1, -1, -1, 1, 1, 1])(dict(points=np.zeros((1, 3)), gt_bboxes_3d=np.zeros((2, 5))))
