"""ShapeClassificationDataset: deterministic voxelised shapes; point-cloud packing and collation."""
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate

from sparsevision.datasets import ShapeClassificationDataset
from sparsevision.datasets.shapes import voxelise_points
from sparsevision.datasets.transforms import PackPointCloudInputs
from sparsevision.models.data_preprocessors import SparseDataPreprocessor


def test_samples_are_deterministic_and_inside_the_grid():
    first = ShapeClassificationDataset(samples_per_class=2, shapes=('box', 'torus'), grid=16)
    again = ShapeClassificationDataset(samples_per_class=2, shapes=('box', 'torus'), grid=16)
    val = ShapeClassificationDataset(split='val', samples_per_class=2, shapes=('box', 'torus'), grid=16)
    assert len(first) == 4 and [s['gt_label'] for s in first.data_list] == [0, 0, 1, 1]
    for a, b, c in zip(first.data_list, again.data_list, val.data_list):
        assert np.array_equal(a['coordinates'], b['coordinates'])
        assert not np.array_equal(a['coordinates'], c['coordinates'])   # train and val draw differently
        assert a['coordinates'].min() >= 0 and a['coordinates'].max() < 16
        assert len(np.unique(a['coordinates'], axis=0)) == len(a['coordinates'])
        assert a['features'].shape == (len(a['coordinates']), 4)


def test_voxelise_points_averages_each_cell():
    points = np.array([[-0.9, -0.9, -0.9], [-0.8, -0.9, -0.9], [0.9, 0.9, 0.9]])
    coordinates, features = voxelise_points(points, 4)
    assert coordinates.tolist() == [[0, 0, 0], [3, 3, 3]]
    np.testing.assert_allclose(features[0], [1.0, -0.85, -0.9, -0.9])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match='unknown primitive'):
        ShapeClassificationDataset(shapes=('blob',))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ShapeClassificationDataset(shapes=(), mesh_files=[str(tmp_path / 'missing.obj')])
    with pytest.raises(ValueError, match='split'):
        ShapeClassificationDataset(split='test')


def test_packed_samples_collate_into_one_sparse_tensor():
    dataset = ShapeClassificationDataset(samples_per_class=1, shapes=('cone', 'arrow'), grid=12,
                                         pipeline=[PackPointCloudInputs()])
    batch = SparseDataPreprocessor()(pseudo_collate([dataset[0], dataset[1]]))
    x = batch['inputs']
    counts = [len(s['coordinates']) for s in dataset.data_list]
    assert x.batch_size == 2 and list(x.spatial_shape) == [12, 12, 12]
    assert x.indices.shape == (sum(counts), 4) and x.features.shape == (sum(counts), 4)
    assert torch.equal(x.indices[:, 0].bincount(), torch.tensor(counts))
    assert [int(s.gt_label) for s in batch['data_samples']] == [0, 1]
    with pytest.raises(ValueError, match='same N'):
        PackPointCloudInputs()(dict(coordinates=np.zeros((3, 3)), features=np.zeros((2, 4)), spatial_shape=[4] * 3))


def test_scene_segmentation_labels_every_voxel():
    from sparsevision.datasets import ShapeSceneSegmentationDataset

    dataset = ShapeSceneSegmentationDataset(scenes=3, grid=24, pipeline=[PackPointCloudInputs()])
    again = ShapeSceneSegmentationDataset(scenes=3, grid=24)
    for sample, same in zip(dataset.data_list, again.data_list):
        assert np.array_equal(sample['gt_seg'], same['gt_seg'])
        assert sample['gt_seg'].shape == (len(sample['coordinates']),)
        present = set(np.unique(sample['gt_seg']).tolist())
        assert 0 in present and 2 <= len(present) <= 4   # ground and up to three shapes
        low = sample['coordinates'][:, 0] <= 2    # the bottom slices are ground
        assert (sample['gt_seg'][low] == 0).mean() > 0.9
    packed = dataset[0]
    assert packed['data_samples'].gt_seg.shape == (packed['inputs']['coordinates'].shape[0],)
