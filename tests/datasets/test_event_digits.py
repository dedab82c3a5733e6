"""Simulated saccade events of the real digits: the simulator, the frame and voxel transforms, the dataset."""
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

from sparsevision.datasets.digits import DigitsDataset
from sparsevision.datasets.event_digits import (EVENT_DTYPE, EventDigitsDataset, EventsToFrames, EventsToVoxels,
                                                PackEventInputs, check_events, simulate_saccade_events)
from sparsevision.registry import DATASETS, TRANSFORMS

SENSOR = (34, 34)


@pytest.fixture(scope='module')
def digit_events():
    """Events of ten real validation digits, one per class."""
    return EventDigitsDataset(split='val', labels_per_class=1, representation='events').data_list


@pytest.fixture(scope='module')
def registry_scope():
    return DefaultScope.get_instance('test_event_digits', scope_name='sparsevision')


def bright_square(side: int = 12, image_size: int = 28) -> np.ndarray:
    image = np.zeros((image_size, image_size), np.float32)
    start = (image_size - side) // 2
    image[start:start + side, start:start + side] = 1
    return image


def events_from_rows(rows) -> np.ndarray:
    return np.array([tuple(row) for row in rows], dtype=EVENT_DTYPE)


def test_simulation_is_deterministic_per_seed():
    image = bright_square()
    first = simulate_saccade_events(image, seed=4)
    assert np.array_equal(first, simulate_saccade_events(image, seed=4))
    assert not np.array_equal(first, simulate_saccade_events(image, seed=5))


def test_events_are_sorted_typed_and_inside_the_sensor(digit_events):
    for item in digit_events:
        events = item['events']
        assert events.dtype == EVENT_DTYPE and len(events) > 1000
        assert np.all(np.diff(events['t']) >= 0) and events['t'].min() >= 0 and events['t'].max() <= 300_000
        assert events['x'].min() >= 0 and events['x'].max() < SENSOR[1]
        assert events['y'].min() >= 0 and events['y'].max() < SENSOR[0]
        assert set(np.unique(events['p'])) == {0, 1}
        assert np.array_equal(check_events(events, SENSOR), events)


def test_blank_image_is_silent_and_events_lie_on_edges():
    assert len(simulate_saccade_events(np.zeros((28, 28), np.float32))) == 0
    events = simulate_saccade_events(bright_square(side=12))  # on the sensor: rows and columns 11..22
    assert len(events) > 200
    # the path keeps the square within 4 / sqrt(3) pixels of its centred place, so only pixels whose
    # bilinear footprint (one pixel) meets the square's swept border fire: not its core, not the far background
    distance_from_centre = np.maximum(np.abs(events['x'] - 16.5), np.abs(events['y'] - 16.5))
    assert np.all(np.abs(distance_from_centre - 6) < 1 + 4 / np.sqrt(3))


def test_closed_triangle_balances_polarity_per_pixel(digit_events):
    for item in digit_events:
        events = item['events']
        pixel = events['y'].astype(np.int64) * SENSOR[1] + events['x']
        net = (np.bincount(pixel[events['p'] == 1], minlength=SENSOR[0] * SENSOR[1])
               - np.bincount(pixel[events['p'] == 0], minlength=SENSOR[0] * SENSOR[1]))
        assert np.abs(net).max() <= 1  # each pixel returns to its start intensity
        assert 0.45 < events['p'].mean() < 0.55


def test_frames_count_every_event(digit_events):
    events = digit_events[0]['events']
    results = EventsToFrames(time_bins=6, sensor_size=SENSOR)(dict(events=events))
    frames = results['frames']
    assert frames.shape == (6, 2, 34, 34) and frames.dtype == np.float32
    assert frames.sum() == len(events)
    assert frames[:, 1].sum() == events['p'].sum()
    assert np.all(frames.sum(axis=(1, 2, 3)) > 0)


def test_voxels_are_unique_in_range_and_match_frames(digit_events):
    events = digit_events[0]['events']
    results = EventsToVoxels(time_bins=6, sensor_size=SENSOR)(dict(events=events))
    coordinates, features = results['voxel_coordinates'], results['voxel_features']
    assert coordinates.dtype == np.int32 and features.dtype == np.float32 and features.shape == (len(coordinates), 2)
    assert features.sum() == len(events) and np.all(features.sum(axis=1) > 0)
    assert len(np.unique(coordinates, axis=0)) == len(coordinates)
    assert coordinates.min() >= 0 and np.all(coordinates.max(axis=0) < (6, 34, 34))
    dense = np.zeros((6, 34, 34, 2), np.float32)
    dense[tuple(coordinates.T)] = features
    frames = EventsToFrames(time_bins=6, sensor_size=SENSOR)(dict(events=events))['frames']
    assert np.array_equal(dense.transpose(0, 3, 1, 2), frames)


def test_empty_streams_give_zero_frames_and_no_voxels():
    empty = np.empty(0, EVENT_DTYPE)
    assert not EventsToFrames(time_bins=3)(dict(events=empty))['frames'].any()
    packed = PackEventInputs()(EventsToVoxels(time_bins=3)(dict(events=empty, gt_label=2)))
    assert packed['inputs']['coordinates'].shape == (0, 3) and packed['inputs']['features'].shape == (0, 2)


def test_integer_rows_and_bool_polarity_are_accepted():
    rows = np.array([[1, 2, 10, 1], [3, 4, 20, 0]])
    structured = np.array([(1, 2, 10, True), (3, 4, 20, False)],
                          dtype=[('x', np.int64), ('y', np.int64), ('t', np.int64), ('p', bool)])
    assert np.array_equal(check_events(rows, SENSOR), check_events(structured, SENSOR))


@pytest.mark.parametrize('events, message', [
    (events_from_rows([(1, 1, 20, 1), (1, 1, 10, 0)]), 'non-decreasing'),
    (events_from_rows([(34, 1, 10, 1)]), 'outside'),
    (events_from_rows([(1, -1, 10, 1)]), 'outside'),
    (events_from_rows([(1, 1, 10, -1)]), 'polarity'),
    (events_from_rows([(1, 1, 10, 2)]), 'polarity'),
    (np.zeros((3, 3), np.int64), 'structured array'),
    (np.zeros((3, 4), np.float32), 'structured array'),
])
def test_bad_events_raise(events, message):
    with pytest.raises(ValueError, match=message):
        EventsToFrames(sensor_size=SENSOR)(dict(events=events))
    with pytest.raises(ValueError, match=message):
        EventsToVoxels(sensor_size=SENSOR)(dict(events=events))


@pytest.mark.parametrize('build, message', [
    (lambda: EventsToFrames(time_bins=0), 'time_bins'),
    (lambda: EventsToVoxels(time_bins=1.5), 'time_bins'),
    (lambda: EventsToFrames(sensor_size=(34,)), 'sensor_size'),
    (lambda: EventsToVoxels(sensor_size=34), 'sensor_size'),
    (lambda: EventDigitsDataset(representation='spikes', lazy_init=True), 'representation'),
    (lambda: EventDigitsDataset(split='test', lazy_init=True), 'split'),
    (lambda: EventDigitsDataset(time_bins=0, lazy_init=True), 'time_bins'),
    (lambda: EventDigitsDataset(digit_size=40, lazy_init=True), 'digit_size'),
    (lambda: simulate_saccade_events(np.zeros((40, 40))), 'no larger than the sensor'),
    (lambda: simulate_saccade_events(np.full((8, 8), 2.0)), r'\[0, 1\]'),
    (lambda: simulate_saccade_events(np.zeros((8, 8)), saccades=0), 'saccades'),
    (lambda: simulate_saccade_events(np.zeros((8, 8)), threshold=0), 'threshold'),
    (lambda: PackEventInputs()(dict(gt_label=1)), 'neither'),
])
def test_bad_arguments_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_dataset_keeps_the_digits_split(digit_events):
    for split, labels_per_class in (('val', None), ('train', 3)):
        events = EventDigitsDataset(split=split, labels_per_class=labels_per_class, representation='events')
        digits = DigitsDataset(split=split, labels_per_class=labels_per_class)
        assert len(events) == len(digits)
        assert [(item['sample_index'], item['gt_label']) for item in events.data_list] == \
            [(item['sample_index'], item['gt_label']) for item in digits.data_list]
        if split == 'val':  # a digit's stream does not depend on which other digits are loaded
            streams = {item['sample_index']: item['events'] for item in events.data_list}
            assert all(np.array_equal(streams[item['sample_index']], item['events']) for item in digit_events)
    assert events.metainfo['classes'] == digits.metainfo['classes']


def test_streams_change_with_the_seed(digit_events):
    other_seed = EventDigitsDataset(split='val', labels_per_class=1, representation='events', seed=1)
    assert not np.array_equal(other_seed.data_list[0]['events'], digit_events[0]['events'])


def test_registry_pipelines_pack_frames_and_voxels(registry_scope):
    frames_set = DATASETS.build(dict(type='EventDigitsDataset', split='val', labels_per_class=1, time_bins=5,
                                     pipeline=[dict(type='PackEventInputs')]))
    sample = frames_set[3]
    assert sample['inputs'].shape == (5, 2, 34, 34) and sample['inputs'].dtype == torch.float32
    assert sample['data_samples'].gt_label.item() == frames_set.data_list[3]['gt_label']
    assert sample['inputs'].sum() == len(frames_set.data_list[3]['events'])

    voxel_pipeline = [dict(type='EventsToVoxels', time_bins=5), dict(type='PackEventInputs')]
    voxels_set = DATASETS.build(dict(type='EventDigitsDataset', split='val', labels_per_class=1,
                                     representation='events', pipeline=voxel_pipeline))
    assert isinstance(TRANSFORMS.get('EventsToVoxels'), type)
    batch = pseudo_collate([voxels_set[0], voxels_set[1]])
    coordinates, features = batch['inputs']['coordinates'], batch['inputs']['features']
    assert voxels_set[0]['inputs']['spatial_shape'] == [5, 34, 34]
    assert [c.dtype for c in coordinates] == [torch.int32] * 2 and [f.shape[1] for f in features] == [2, 2]
    assert features[1].sum() == len(voxels_set.data_list[1]['events'])

    from sparsevision.sparse import SparseTensor
    indices = torch.cat([torch.nn.functional.pad(c, (1, 0), value=b) for b, c in enumerate(coordinates)])
    tensor = SparseTensor(torch.cat(features), indices, [5, 34, 34], batch_size=2)
    assert tensor.dense().shape == (2, 2, 5, 34, 34)
