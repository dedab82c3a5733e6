"""SimulatedLidarSceneDataset: deterministic labelled sweeps, boxes around their cars, lazy cached generation."""
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

from sparsevision.datasets import SimulatedLidarSceneDataset, lidar_scenes
from sparsevision.models.data_preprocessors import SparseDataPreprocessor

SMALL = dict(scenes=3, beams=16, azimuths=512)


def points_in_box(xyz, box, margin):
    """Whether each point lies inside the (x, y, z, dx, dy, dz, yaw) box grown by ``margin``."""
    offset = xyz - box[:3]
    cosine, sine = np.cos(box[6]), np.sin(box[6])
    along, across = cosine * offset[:, 0] + sine * offset[:, 1], -sine * offset[:, 0] + cosine * offset[:, 1]
    return (np.abs(np.stack([along, across, offset[:, 2]], axis=1)) <= box[3:6] / 2 + margin).all(axis=1)


def test_scenes_are_deterministic_per_seed_and_split():
    first, again = SimulatedLidarSceneDataset(**SMALL), SimulatedLidarSceneDataset(**SMALL)
    other_seed, val = SimulatedLidarSceneDataset(seed=1, **SMALL), SimulatedLidarSceneDataset(split='val', **SMALL)
    for index in range(2):
        a, b = first.get_data_info(index), again.get_data_info(index)
        for key in ('points', 'pts_semantic_mask', 'gt_bboxes_3d'):
            np.testing.assert_array_equal(a[key], b[key])
        for different in (other_seed.get_data_info(index), val.get_data_info(index)):
            assert a['points'].shape != different['points'].shape or not np.array_equal(a['points'],
                                                                                        different['points'])
    assert not np.array_equal(first.get_data_info(0)['points'], first.get_data_info(1)['points'])


def test_sample_layout_and_labels():
    dataset = SimulatedLidarSceneDataset(scenes=2)
    assert dataset.metainfo['classes'] == ('ground', 'vehicle', 'pole', 'building')
    assert dataset.metainfo['box_classes'] == ('vehicle',)
    sample = dataset.get_data_info(1)
    points, mask, boxes = sample['points'], sample['pts_semantic_mask'], sample['gt_bboxes_3d']
    assert points.dtype == np.float32 and points.shape[1] == 4 and 20_000 <= len(points) <= 40_000
    assert mask.dtype == np.int64 and mask.shape == (len(points),)
    assert (np.bincount(mask, minlength=4) > 50).all()   # every class is hit
    assert 0.0 <= points[:, 3].min() and points[:, 3].max() <= 1.0
    assert np.linalg.norm(points[:, :3], axis=1).max() < 50.1
    np.testing.assert_allclose(np.median(points[mask == 0, 2]), -1.8, atol=0.1)   # the road, 1.8 m below
    assert boxes.dtype == np.float32 and boxes.shape[1] == 7 and len(boxes) >= 3
    assert sample['gt_labels_3d'].dtype == np.int64 and (sample['gt_labels_3d'] == 0).all()
    assert ((boxes[:, 3] >= 3.9) & (boxes[:, 3] <= 4.8) & (boxes[:, 4] >= 1.7) & (boxes[:, 4] <= 2.0)).all()
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 5] / 2, -1.8, atol=1e-5)   # standing on the road
    assert (np.abs(boxes[:, 6]) <= np.pi).all()


def test_boxes_hold_their_car_points():
    dataset = SimulatedLidarSceneDataset(scenes=2, min_points_per_box=1, range_noise=0.0)
    for index in range(2):
        sample = dataset.get_data_info(index)
        xyz = sample['points'][:, :3]
        vehicle = sample['pts_semantic_mask'] == 1
        inside = np.stack([points_in_box(xyz, box, margin=1e-3) for box in sample['gt_bboxes_3d']])
        assert inside[:, vehicle].any(axis=0).all()   # every car point lies in a box
        assert (inside[:, vehicle].sum(axis=1) >= 1).all()   # every box holds car points
        assert not inside[:, sample['pts_semantic_mask'] >= 2].any()   # no pole or building inside a car
    strict = SimulatedLidarSceneDataset(scenes=1, min_points_per_box=50)
    sample = strict.get_data_info(0)
    counts = [points_in_box(sample['points'][sample['pts_semantic_mask'] == 1, :3], box, margin=0.1).sum()
              for box in sample['gt_bboxes_3d']]
    assert min(counts) >= 50


def test_generation_is_lazy_and_cached(monkeypatch):
    calls = []
    simulate = lidar_scenes.simulate_street_sweep
    monkeypatch.setattr(lidar_scenes, 'simulate_street_sweep', lambda *args, **kw: calls.append(1) or simulate(
        *args, **kw))
    dataset = SimulatedLidarSceneDataset(scenes=100_000, beams=8, azimuths=256)
    assert len(dataset) == 100_000 and not calls
    first = dataset.get_data_info(5)
    first['points'][:] = 0   # the pipeline may change a sample in place without touching the cache
    again = dataset.get_data_info(5)
    assert len(calls) == 1 and again['points'].any()
    uncached = SimulatedLidarSceneDataset(scenes=2, beams=8, azimuths=256, cache=False)
    uncached.get_data_info(0), uncached.get_data_info(0)
    assert len(calls) == 3


def test_pipeline_to_sparse_batch():
    pipeline = [dict(type='PointsRangeFilter', point_cloud_range=(-40, -40, -3, 40, 40, 1)),
                dict(type='ObjectRangeFilter', point_cloud_range=(-40, -40, -3, 40, 40, 1)),
                dict(type='RandomFlip'), dict(type='RandomRotation'), dict(type='RandomScale'),
                dict(type='Voxelize', voxel_size=(0.2, 0.2, 0.2), point_cloud_range=(-40, -40, -3, 40, 40, 1)),
                dict(type='PackPointCloudInputs')]
    with DefaultScope.overwrite_default_scope('sparsevision'):
        dataset = SimulatedLidarSceneDataset(pipeline=pipeline, **SMALL)
    batch = pseudo_collate([dataset[0], dataset[1]])
    collated = SparseDataPreprocessor()(batch)
    sparse = collated['inputs']
    assert sparse.batch_size == 2 and sparse.features.shape[1] == 4 and list(sparse.spatial_shape) == [20, 400, 400]
    for data_sample in collated['data_samples']:
        assert data_sample.gt_bboxes_3d.shape[1] == 7 and data_sample.gt_labels_3d.dtype == torch.long
        assert data_sample.gt_point_seg.shape == data_sample.point_to_voxel.shape
        assert set(data_sample.gt_seg.tolist()) <= {0, 1, 2, 3}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='split'):
        SimulatedLidarSceneDataset(split='testing')
    with pytest.raises(ValueError, match='scenes, beams and azimuths'):
        SimulatedLidarSceneDataset(beams=0)
