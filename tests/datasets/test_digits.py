"""The digits dataset and the image transforms."""
import numpy as np
import pytest

from sparsevision.datasets import DigitsDataset
from sparsevision.datasets.transforms import (LoadImageFromFile, PackClassificationInputs, RandomAffine,
                                              ResizeImage)


def test_split_is_fixed_disjoint_and_stratified():
    train, val = DigitsDataset(split='train'), DigitsDataset(split='val')
    train_ids = {item['sample_index'] for item in train.data_list}
    val_ids = {item['sample_index'] for item in val.data_list}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 1797
    assert val_ids == {item['sample_index'] for item in DigitsDataset(split='val').data_list}
    counts = np.bincount([item['gt_label'] for item in val.data_list], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert val_ids != {item['sample_index'] for item in DigitsDataset(split='val', split_seed=1).data_list}


def test_pipeline_output():
    dataset = DigitsDataset(split='val', pipeline=[ResizeImage(32), PackClassificationInputs()])
    sample = dataset[0]
    assert sample['inputs'].shape == (1, 32, 32)
    assert 0 <= sample['inputs'].min() and sample['inputs'].max() <= 1
    assert sample['data_samples'].gt_label.item() == dataset.data_list[0]['gt_label']


@pytest.mark.parametrize('arguments, message', [(dict(split='test'), 'split'), (dict(val_fraction=1.0), 'val_fraction')])
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataset(**arguments)


def test_random_affine_is_seeded_by_numpy():
    image = np.zeros((32, 32), np.float32)
    image[8:24, 14:18] = 1
    np.random.seed(3)
    first = RandomAffine()(dict(img=image.copy()))['img']
    np.random.seed(3)
    assert np.array_equal(first, RandomAffine()(dict(img=image.copy()))['img'])
    assert not np.array_equal(first, image)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        LoadImageFromFile()(dict(img_path=str(tmp_path / 'missing.png')))
    not_an_image = tmp_path / 'notes.png'
    not_an_image.write_text('hello')
    with pytest.raises(ValueError, match='could not decode'):
        LoadImageFromFile()(dict(img_path=str(not_an_image)))
