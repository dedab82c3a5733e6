"""Event-camera recordings simulated from sklearn's real handwritten digits, for spiking networks.

A static digit is viewed by a sensor that moves along three straight saccades
(a triangle), the recording procedure of N-MNIST (Orchard et al., "Converting
Static Image Datasets to Spiking Neuromorphic Datasets Using Saccades",
Frontiers in Neuroscience 2015). Events are a structured array of
:data:`EVENT_DTYPE`; registered transforms turn them into dense frames or sparse
voxels, and :class:`PackEventInputs` packs either for a model.
"""
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.structures import BaseDataElement

from ..registry import DATASETS, TRANSFORMS
from .digits import DigitsDataset

EVENT_DTYPE = np.dtype([('x', np.int16), ('y', np.int16), ('t', np.int64), ('p', np.int8)])
"""One event: column ``x``, row ``y``, time ``t`` in microseconds, polarity ``p`` (0 darker/OFF, 1 brighter/ON)."""

LOG_INTENSITY_OFFSET = 0.1
"""``eps`` of the log intensity ``log(I + eps)`` that pixels respond to (keeps black finite)."""

REPRESENTATIONS = ('frames', 'voxels', 'events')


def _check_sensor_size(sensor_size: Sequence[int]) -> Tuple[int, int]:
    if np.ndim(sensor_size) != 1 or len(sensor_size) != 2 or any(int(size) != size or size < 1
                                                                 for size in sensor_size):
        raise ValueError(f'sensor_size must be two positive integers (height, width), got {sensor_size!r}')
    return int(sensor_size[0]), int(sensor_size[1])


def _check_time_bins(time_bins: int) -> int:
    if int(time_bins) != time_bins or time_bins < 1:
        raise ValueError(f'time_bins must be a positive integer (the number of time slices), got {time_bins!r}')
    return int(time_bins)


def check_events(events: np.ndarray, sensor_size: Sequence[int]) -> np.ndarray:
    """Validate an event stream and return it as an :data:`EVENT_DTYPE` array.

    Args:
        events: a structured array with fields ``x``, ``y``, ``t``, ``p``
            (``p`` may be bool), or an integer ``[E, 4]`` array with those columns.
        sensor_size: ``(height, width)`` of the sensor.

    Raises:
        ValueError: another layout, timestamps out of order, coordinates
            outside the sensor, or a polarity other than 0 and 1.
    """
    height, width = _check_sensor_size(sensor_size)
    if events.dtype.names is not None and set('xytp') <= set(events.dtype.names) and events.ndim == 1:
        columns = [events[field] for field in 'xytp']
    elif events.dtype.names is None and events.ndim == 2 and events.shape[1] == 4 and (
            np.issubdtype(events.dtype, np.integer)):
        columns = list(events.T)
    else:
        raise ValueError(f'events must be a structured array with fields x, y, t, p or an integer [E, 4] array of '
                         f'(x, y, t, p) rows, got dtype {events.dtype} and shape {events.shape}')
    checked = np.empty(len(events), EVENT_DTYPE)
    if not len(events):
        return checked
    x, y, t, polarity = columns
    backwards = t[1:] < t[:-1]
    if np.any(backwards):
        position = int(np.flatnonzero(backwards)[0]) + 1
        raise ValueError(f'event timestamps must be non-decreasing, but event {position} (t={t[position]}) comes '
                         f'after t={t[position - 1]}; sort them with events[np.argsort(events["t"], kind="stable")]')
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    if np.any(outside):
        position = int(np.flatnonzero(outside)[0])
        raise ValueError(f'event {position} at (x={x[position]}, y={y[position]}) lies outside the {height}x{width} '
                         'sensor (height x width); pass the sensor_size the events were recorded with')
    if np.any((polarity != 0) & (polarity != 1)):
        raise ValueError(f'polarity must be 0 (OFF) or 1 (ON), got values {np.unique(polarity).tolist()}; '
                         'map signed polarities with (p > 0)')
    checked['x'], checked['y'], checked['t'], checked['p'] = x, y, t, polarity
    return checked


def _triangle_path(saccades: int, steps_per_saccade: int, saccade_length: float) -> np.ndarray:
    """Sensor offsets ``[1 + saccades * steps_per_saccade, 2]`` (x, y) in pixels, starting at rest.

    Saccade ``k`` runs straight from vertex ``k % 3`` to vertex ``(k + 1) % 3`` of
    an equilateral triangle of side ``saccade_length`` centred on the sensor
    (top, lower right, lower left), so three saccades close the triangle.
    """
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    vertices = saccade_length / np.sqrt(3.0) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    order = np.arange(saccades)
    starts, ends = vertices[order % 3], vertices[(order + 1) % 3]
    fractions = np.arange(1, steps_per_saccade + 1)[None, :, None] / steps_per_saccade
    path = starts[:, None] + (ends - starts)[:, None] * fractions
    return np.concatenate([vertices[:1], path.reshape(-1, 2)])


def _render(image: np.ndarray, offset: np.ndarray, sensor_size: Tuple[int, int]) -> np.ndarray:
    """The image centred on the sensor and shifted by a subpixel ``offset`` (x, y), bilinear, black outside."""
    height, width = sensor_size
    left = (width - image.shape[1]) / 2 + offset[0]
    top = (height - image.shape[0]) / 2 + offset[1]
    matrix = np.array([[1.0, 0.0, left], [0.0, 1.0, top]])
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def simulate_saccade_events(image: np.ndarray, sensor_size: Sequence[int] = (34, 34), saccades: int = 3,
                            steps_per_saccade: int = 25, threshold: float = 0.25,
                            seed: Union[int, Sequence[int]] = 0, saccade_length: float = 4.0,
                            saccade_duration_us: int = 100_000, threshold_mismatch: float = 0.05) -> np.ndarray:
    """Events of an event camera moved in straight saccades (a triangle path) in front of a static image.

    Each step renders the image with a subpixel shift. A pixel fires when its
    log intensity ``log(I + LOG_INTENSITY_OFFSET)`` has moved by its contrast
    threshold since its reference level (set at its last event): ON
    (``p = 1``) upwards, OFF (``p = 0``) downwards, one event per threshold
    crossed, each timed where linear interpolation within the step crosses it.
    Per-pixel thresholds vary by ``threshold_mismatch`` (relative standard
    deviation) and each reference level starts at a random phase; both are
    drawn from ``seed``, so a seed fixes the stream.

    Args:
        image: float ``[h, w]`` intensities in ``[0, 1]``, at most the sensor size; centred on the sensor.
        sensor_size: ``(height, width)`` in pixels.
        saccades: number of straight movements (three close the triangle).
        steps_per_saccade: rendered frames per saccade.
        threshold: mean contrast threshold in log intensity.
        seed: anything :func:`numpy.random.default_rng` takes.
        saccade_length: pixels travelled per saccade (side of the triangle).
        saccade_duration_us: microseconds per saccade.
        threshold_mismatch: relative standard deviation of the per-pixel thresholds (0 for identical pixels).

    Returns:
        :data:`EVENT_DTYPE` array sorted by ``t``, then ``y``, then ``x``; ``t``
        lies in ``[0, saccades * saccade_duration_us]``.
    """
    sensor_size = _check_sensor_size(sensor_size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or image.shape[0] > sensor_size[0] or image.shape[1] > sensor_size[1]:
        raise ValueError(f'image must be [h, w] no larger than the sensor {sensor_size}, got shape {image.shape}; '
                         'resize it or enlarge sensor_size')
    if not np.all((image >= 0) & (image <= 1)):
        raise ValueError(f'image intensities must lie in [0, 1], got range [{image.min()}, {image.max()}]; '
                         'divide by the maximum value')
    if saccades < 1 or steps_per_saccade < 1 or saccade_duration_us < 1:
        raise ValueError(f'saccades ({saccades}), steps_per_saccade ({steps_per_saccade}) and saccade_duration_us '
                         f'({saccade_duration_us}) must be positive')
    if threshold <= 0 or not 0 <= threshold_mismatch < 0.5:
        raise ValueError(f'threshold must be positive and threshold_mismatch in [0, 0.5), got {threshold} and '
                         f'{threshold_mismatch}')
    rng = np.random.default_rng(seed)
    pixels = sensor_size[0] * sensor_size[1]
    thresholds = threshold * np.clip(rng.normal(1.0, threshold_mismatch, pixels), 0.5, 1.5)
    path = _triangle_path(saccades, steps_per_saccade, saccade_length)
    step_duration_us = saccade_duration_us / steps_per_saccade

    previous = np.log(_render(image, path[0], sensor_size).ravel().astype(np.float64) + LOG_INTENSITY_OFFSET)
    reference = previous + (rng.random(pixels) - 0.5) * thresholds
    sites, times, polarities = [], [], []
    for step, offset in enumerate(path[1:]):
        current = np.log(_render(image, offset, sensor_size).ravel().astype(np.float64) + LOG_INTENSITY_OFFSET)
        difference = current - reference
        crossings = np.floor(np.abs(difference) / thresholds).astype(np.int64)
        firing = np.flatnonzero(crossings)
        if firing.size:
            counts, direction = crossings[firing], np.sign(difference[firing])
            site = np.repeat(firing, counts)
            ordinal = np.arange(1, counts.sum() + 1) - np.repeat(np.cumsum(counts) - counts, counts)
            level = reference[site] + np.repeat(direction, counts) * ordinal * thresholds[site]
            change = current[site] - previous[site]
            fraction = np.divide(level - previous[site], change, out=np.ones_like(change), where=change != 0)
            sites.append(site)
            times.append(np.floor((step + np.clip(fraction, 0.0, 1.0)) * step_duration_us).astype(np.int64))
            polarities.append(np.repeat(direction > 0, counts))
            reference[firing] += direction * counts * thresholds[firing]
        previous = current

    events = np.empty(sum(len(site) for site in sites), EVENT_DTYPE)
    if len(events):
        events['y'], events['x'] = np.divmod(np.concatenate(sites), sensor_size[1])
        events['t'], events['p'] = np.concatenate(times), np.concatenate(polarities)
        events = events[np.lexsort((events['x'], events['y'], events['t']))]
    return events


def _time_bin_of_events(times: np.ndarray, time_bins: int) -> np.ndarray:
    """Index of the equal-duration bin, over the stream's own span, of each sorted timestamp."""
    return (times - times[0]) * time_bins // (times[-1] - times[0] + 1)


class EventBinning:
    """Base of the event converters: ``time_bins`` equal-duration bins on a ``sensor_size`` sensor (checked)."""

    def __init__(self, time_bins: int = 10, sensor_size: Sequence[int] = (34, 34)):
        self.time_bins = _check_time_bins(time_bins)
        self.sensor_size = _check_sensor_size(sensor_size)


@TRANSFORMS.register_module()
class EventsToFrames(EventBinning):
    """``events`` -> ``frames``: float32 ``[T, 2, H, W]`` event counts per time bin and polarity.

    The stream's span (first to last event) is cut into ``time_bins`` bins of
    equal duration; channel 0 counts OFF events, channel 1 ON events. An empty
    stream gives zeros.

    Args:
        time_bins: number of time bins ``T``.
        sensor_size: ``(height, width)`` of the sensor.
    """

    def __call__(self, results: dict) -> dict:
        events = check_events(results['events'], self.sensor_size)
        height, width = self.sensor_size
        shape = (self.time_bins, 2, height, width)
        if len(events):
            site = np.ravel_multi_index((_time_bin_of_events(events['t'], self.time_bins), events['p'], events['y'],
                                         events['x']), shape)
            frames = np.bincount(site, minlength=np.prod(shape)).astype(np.float32).reshape(shape)
        else:
            frames = np.zeros(shape, np.float32)
        results['frames'] = frames
        return results


@TRANSFORMS.register_module()
class EventsToVoxels(EventBinning):
    """``events`` -> sparse voxels: the occupied ``(t_bin, y, x)`` sites with their counts per polarity.

    Sets ``voxel_coordinates`` int32 ``[N, 3]`` (rows ``(t_bin, y, x)``, unique,
    sorted), ``voxel_features`` float32 ``[N, 2]`` (OFF count, ON count) and
    ``spatial_shape = (T, H, W)``: with a batch column in front, the
    coordinates are spconv's ``(z, y, x)`` indices of a ``SparseTensor`` with
    that shape. The bins are :class:`EventsToFrames`'. An empty stream gives ``N = 0``.

    Args:
        time_bins: number of time bins ``T``.
        sensor_size: ``(height, width)`` of the sensor.
    """

    def __call__(self, results: dict) -> dict:
        events = check_events(results['events'], self.sensor_size)
        spatial_shape = (self.time_bins, *self.sensor_size)
        coordinates, features = np.zeros((0, 3), np.int32), np.zeros((0, 2), np.float32)
        if len(events):
            site = np.ravel_multi_index((_time_bin_of_events(events['t'], self.time_bins), events['y'], events['x']),
                                        spatial_shape)
            occupied, row = np.unique(site, return_inverse=True)
            coordinates = np.stack(np.unravel_index(occupied, spatial_shape), axis=1).astype(np.int32)
            features = np.bincount(row * 2 + events['p'], minlength=2 * len(occupied)).reshape(-1, 2)
        results['voxel_coordinates'] = coordinates
        results['voxel_features'] = features.astype(np.float32)
        results['spatial_shape'] = spatial_shape
        return results


@TRANSFORMS.register_module()
class PackEventInputs:
    """Frames or voxels -> ``inputs``; label and meta -> ``data_samples`` (like ``PackClassificationInputs``).

    After :class:`EventsToFrames`, ``inputs`` is a float32 tensor ``[T, 2, H, W]``
    (stacked, ``[B, T, 2, H, W]``: what ``MetaSpikeFormer`` takes with
    ``in_channels=2``). After :class:`EventsToVoxels`, it is
    ``dict(coordinates=int32 [N, 3], features=float32 [N, 2], spatial_shape=[T, H, W])``,
    the layout of ``PackPointCloudInputs``: putting each sample's batch index in
    front of its coordinates gives the indices of a ``SparseTensor``.

    Args:
        meta_keys: keys copied into the data sample's metainfo when present.
    """

    def __init__(self, meta_keys: Sequence[str] = ('sample_index',)):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        has_frames, has_voxels = 'frames' in results, 'voxel_features' in results
        if has_frames == has_voxels:
            raise ValueError('PackEventInputs needs exactly one of frames or voxels, found '
                             f'{"both" if has_frames else "neither"}; put one EventsToFrames or EventsToVoxels '
                             'before it in the pipeline')
        if has_frames:
            inputs = torch.from_numpy(np.ascontiguousarray(results['frames'], dtype=np.float32))
        else:
            inputs = dict(coordinates=torch.from_numpy(np.ascontiguousarray(results['voxel_coordinates'], np.int32)),
                          features=torch.from_numpy(np.ascontiguousarray(results['voxel_features'], np.float32)),
                          spatial_shape=list(results['spatial_shape']))
        sample = BaseDataElement(metainfo={key: results[key] for key in self.meta_keys if key in results})
        if 'gt_label' in results:
            sample.gt_label = torch.as_tensor(results['gt_label'], dtype=torch.long)
        return dict(inputs=inputs, data_samples=sample)


@DATASETS.register_module()
class EventDigitsDataset(BaseDataset):
    """sklearn's 1,797 real digits as simulated event-camera recordings (N-MNIST style), for spiking networks.

    Each 8x8 digit is upsampled bilinearly to ``digit_size`` (N-MNIST: 28 on a
    34x34 sensor) and recorded with :func:`simulate_saccade_events` once, when
    the dataset loads; the stream of digit ``i`` depends only on ``i`` and
    ``seed``. The split is :class:`DigitsDataset`'s. Entries hold ``events``,
    ``gt_label`` and ``sample_index``; ``representation`` puts
    :class:`EventsToFrames` or :class:`EventsToVoxels` in front of ``pipeline``
    (``'events'`` leaves raw events to it), which usually ends with :class:`PackEventInputs`.

    Args:
        split: ``'train'`` or ``'val'``.
        sensor_size: ``(height, width)`` of the simulated sensor.
        saccades: straight movements per recording.
        seed: seed of the simulated sensor's threshold mismatch and reference levels.
        representation: ``'frames'``, ``'voxels'`` or ``'events'``.
        time_bins: time bins of the frames or voxels.
        labels_per_class: keep this many digits per class (see :class:`DigitsDataset`); ``None`` keeps all.
        val_fraction: share of each class held out for validation.
        split_seed: seed of the split.
        digit_size: side in pixels of the upsampled digit.
        pipeline: transforms after the representation's converter.
        **kwargs: other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO = DigitsDataset.METAINFO

    def __init__(self, split: str = 'train', sensor_size: Sequence[int] = (34, 34), saccades: int = 3, seed: int = 0,
                 representation: str = 'frames', time_bins: int = 10, labels_per_class: Optional[int] = None,
                 val_fraction: float = 0.2, split_seed: int = 0, digit_size: int = 28, pipeline=(), **kwargs):
        if representation not in REPRESENTATIONS:
            raise ValueError(f'unknown representation {representation!r}; choose from {", ".join(REPRESENTATIONS)}')
        self.sensor_size = _check_sensor_size(sensor_size)
        if not 1 <= digit_size <= min(self.sensor_size):
            raise ValueError(f'digit_size must fit on the {self.sensor_size} sensor, got {digit_size}')
        self.digits = DigitsDataset(split=split, val_fraction=val_fraction, split_seed=split_seed,
                                    labels_per_class=labels_per_class, lazy_init=True)
        self.saccades, self.seed, self.digit_size = saccades, seed, digit_size
        self.representation, self.time_bins = representation, _check_time_bins(time_bins)
        converters = dict(frames=EventsToFrames, voxels=EventsToVoxels)
        converter = ([converters[representation](time_bins=self.time_bins, sensor_size=self.sensor_size)]
                     if representation in converters else [])
        super().__init__(pipeline=converter + list(pipeline), serialize_data=False, **kwargs)

    def load_data_list(self):
        size = (self.digit_size, self.digit_size)
        return [dict(events=simulate_saccade_events(cv2.resize(item['img'], size, interpolation=cv2.INTER_LINEAR),
                                                    self.sensor_size, self.saccades,
                                                    seed=(self.seed, item['sample_index'])),
                     gt_label=item['gt_label'], sample_index=item['sample_index'])
                for item in self.digits.load_data_list()]
