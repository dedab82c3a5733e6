"""Point-cloud transforms on LiDAR-frame samples, and mean voxelisation.

A sample holds ``points`` (float32 ``[P, 3 + C]``: x, y, z, features), and
optionally ``pts_semantic_mask`` (int64 ``[P]``), ``gt_bboxes_3d`` (float32
``[M, 7]``: gravity centre x, y, z, length dx, width dy, height dz, yaw
counter-clockwise from +x) and ``gt_labels_3d`` (int64 ``[M]``). The random
transforms draw from numpy's global generator (which mmengine seeds per
worker), move the boxes with the points and keep yaw in [-pi, pi).
"""
import math
from typing import Sequence, Tuple

import numpy as np
import torch

from ...registry import TRANSFORMS
from ...sparse import grid_shape, voxelize_mean
from ...structures import box_tensor

POINT_KEYS = ('pts_semantic_mask',)   # per-point arrays kept aligned with ``points``
FLIP_DIRECTIONS = ('horizontal', 'vertical')


def _range(point_cloud_range: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    bounds = np.asarray(point_cloud_range, dtype=np.float64)
    if bounds.shape != (6,) or not np.isfinite(bounds).all() or not (bounds[:3] < bounds[3:]).all():
        raise ValueError('point_cloud_range must be 6 finite numbers (x_min, y_min, z_min, x_max, y_max, z_max) '
                         f'with every min < max, got {point_cloud_range!r}')
    return bounds[:3], bounds[3:]


def _interval(values: Sequence[float], name: str) -> Tuple[float, float]:
    values = tuple(values)
    if len(values) != 2 or not float(values[0]) <= float(values[1]):
        raise ValueError(f'{name} must be (low, high) with low <= high, got {values!r}')
    return float(values[0]), float(values[1])


def _wrap_angle(yaw: np.ndarray) -> np.ndarray:
    return (yaw + np.pi) % (2 * np.pi) - np.pi


def _keep_points(results: dict, keep: np.ndarray) -> dict:
    results['points'] = results['points'][keep]
    for key in POINT_KEYS:
        if key in results:
            results[key] = results[key][keep]
    return results


def _boxes(results: dict):
    """A float copy of the sample's boxes, or ``None`` when it has none."""
    if 'gt_bboxes_3d' not in results:
        return None
    return box_tensor(results['gt_bboxes_3d']).numpy()


@TRANSFORMS.register_module()
class SelectPointColumns:
    """Keep the listed columns of ``points``, in order (mmdet3d's ``use_dim``): e.g. ``(0, 1, 2)`` for models that
    read coordinates only, so clouds from sensors with other feature columns or scales fit them.

    Args:
        columns: column indices; the first three must be x, y, z.
    """

    def __init__(self, columns: Sequence[int] = (0, 1, 2)):
        self.columns = [int(column) for column in columns]
        if len(self.columns) < 3 or min(self.columns) < 0:
            raise ValueError(f'columns must list x, y, z (and any features), as indices >= 0, got {columns!r}')

    def __call__(self, results: dict) -> dict:
        points = results['points']
        if max(self.columns) >= points.shape[1]:
            raise ValueError(f'SelectPointColumns wants column {max(self.columns)} but the points have '
                             f'{points.shape[1]} columns')
        results['points'] = np.ascontiguousarray(points[:, self.columns])
        return results


@TRANSFORMS.register_module()
class PointsRangeFilter:
    """Drop points (and their ``pts_semantic_mask`` entries) outside ``[min, max)`` on any axis.

    Args:
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
    """

    def __init__(self, point_cloud_range: Sequence[float]):
        self.low, self.high = _range(point_cloud_range)

    def __call__(self, results: dict) -> dict:
        xyz = results['points'][:, :3]
        return _keep_points(results, ((xyz >= self.low) & (xyz < self.high)).all(axis=1))


@TRANSFORMS.register_module()
class ObjectRangeFilter:
    """Drop boxes (and their labels) whose centre lies outside the range in bird's-eye view (x and y).

    Args:
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``; z is not checked.
    """

    def __init__(self, point_cloud_range: Sequence[float]):
        self.low, self.high = _range(point_cloud_range)

    def __call__(self, results: dict) -> dict:
        boxes = _boxes(results)
        if boxes is None:
            return results
        centres = boxes[:, :2]
        keep = ((centres >= self.low[:2]) & (centres < self.high[:2])).all(axis=1)
        results['gt_bboxes_3d'] = boxes[keep]
        if 'gt_labels_3d' in results:
            results['gt_labels_3d'] = np.asarray(results['gt_labels_3d'])[keep]
        return results


@TRANSFORMS.register_module()
class RandomRotation:
    """Rotate points and boxes about the z axis by an angle drawn uniformly from ``angle_range`` (radians).

    Args:
        angle_range: ``(low, high)`` rotation angles, counter-clockwise.
    """

    def __init__(self, angle_range: Sequence[float] = (-math.pi / 4, math.pi / 4)):
        self.angle_range = _interval(angle_range, 'angle_range')

    def __call__(self, results: dict) -> dict:
        angle = np.random.uniform(*self.angle_range)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=np.float32)
        points = np.array(results['points'], dtype=np.float32)
        points[:, :2] = points[:, :2] @ rotation.T
        results['points'] = points
        boxes = _boxes(results)
        if boxes is not None:
            boxes[:, :2] = boxes[:, :2] @ rotation.T
            boxes[:, 6] = _wrap_angle(boxes[:, 6] + angle)
            results['gt_bboxes_3d'] = boxes
        return results


@TRANSFORMS.register_module()
class RandomFlip:
    """Mirror points and boxes in bird's-eye view, each direction independently with probability ``ratio``.

    ``'horizontal'`` mirrors across the x axis (y -> -y, yaw -> -yaw);
    ``'vertical'`` mirrors across the y axis (x -> -x, yaw -> pi - yaw), as
    mmdetection3d's LiDAR flips.

    Args:
        directions: any of ``'horizontal'`` and ``'vertical'``.
        ratio: probability of each flip.
    """

    def __init__(self, directions: Sequence[str] = FLIP_DIRECTIONS, ratio: float = 0.5):
        unknown = [direction for direction in directions if direction not in FLIP_DIRECTIONS]
        if unknown or not 0.0 <= ratio <= 1.0:
            raise ValueError(f'directions must be among {FLIP_DIRECTIONS} and ratio in [0, 1], got '
                             f'{tuple(directions)!r} and {ratio!r}')
        self.directions, self.ratio = tuple(directions), float(ratio)

    def __call__(self, results: dict) -> dict:
        for direction in self.directions:
            if np.random.rand() >= self.ratio:
                continue
            axis = 1 if direction == 'horizontal' else 0
            points = np.array(results['points'], dtype=np.float32)
            points[:, axis] = -points[:, axis]
            results['points'] = points
            boxes = _boxes(results)
            if boxes is not None:
                boxes[:, axis] = -boxes[:, axis]
                boxes[:, 6] = _wrap_angle(-boxes[:, 6] if axis == 1 else np.pi - boxes[:, 6])
                results['gt_bboxes_3d'] = boxes
        return results


@TRANSFORMS.register_module()
class RandomScale:
    """Scale points and boxes (centres and sizes) about the origin by a factor drawn from ``scale_range``.

    Args:
        scale_range: ``(low, high)`` factors, both positive.
    """

    def __init__(self, scale_range: Sequence[float] = (0.95, 1.05)):
        self.scale_range = _interval(scale_range, 'scale_range')
        if self.scale_range[0] <= 0:
            raise ValueError(f'scale_range must be positive, got {scale_range!r}')

    def __call__(self, results: dict) -> dict:
        factor = np.float32(np.random.uniform(*self.scale_range))
        points = np.array(results['points'], dtype=np.float32)
        points[:, :3] *= factor
        results['points'] = points
        boxes = _boxes(results)
        if boxes is not None:
            boxes[:, :6] *= factor
            results['gt_bboxes_3d'] = boxes
        return results


@TRANSFORMS.register_module()
class RandomJitter:
    """Add Gaussian noise of standard deviation ``std``, clipped to ``[-clip, clip]``, to every x, y and z.

    Args:
        std: noise standard deviation, metres.
        clip: largest shift per axis, metres.
    """

    def __init__(self, std: float = 0.01, clip: float = 0.05):
        if std < 0 or clip < 0:
            raise ValueError(f'std and clip must be >= 0, got {std!r} and {clip!r}')
        self.std, self.clip = float(std), float(clip)

    def __call__(self, results: dict) -> dict:
        points = np.array(results['points'], dtype=np.float32)
        noise = np.clip(np.random.normal(0.0, self.std, size=(len(points), 3)), -self.clip, self.clip)
        points[:, :3] += noise.astype(np.float32)
        results['points'] = points
        return results


@TRANSFORMS.register_module()
class PointSample:
    """Draw exactly ``num_points`` points (and their mask entries), keeping their order in the scan.

    Samples without replacement when the cloud has enough points, with replacement otherwise.

    Args:
        num_points: points to keep.
    """

    def __init__(self, num_points: int):
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f'num_points must be an integer >= 1, got {num_points!r}')
        self.num_points = num_points

    def __call__(self, results: dict) -> dict:
        total = len(results['points'])
        if total == 0:
            raise ValueError('PointSample got a sample with no points')
        chosen = np.sort(np.random.choice(total, self.num_points, replace=total < self.num_points))
        return _keep_points(results, chosen)


@TRANSFORMS.register_module()
class Voxelize:
    """Mean voxelisation of ``points`` into the sparse inputs that ``PackPointCloudInputs`` packs.

    Adds ``coordinates`` (int32 ``[N, 3]``, z, y, x), ``features`` (float32
    ``[N, 3 + C]``, the mean of the voxel's point columns), ``spatial_shape``
    (``[D, H, W]``), ``point_to_voxel`` (int64 ``[P]``, the voxel row of each
    point, ``-1`` outside the grid), ``voxel_size`` and ``point_cloud_range``;
    with a ``pts_semantic_mask`` also ``gt_seg`` (int64 ``[N]``, the label most
    of the voxel's points carry, the smallest on ties). Uses
    :func:`sparsevision.sparse.voxelize_mean` (bitwise deterministic).

    Args:
        voxel_size: ``(x, y, z)`` voxel edge lengths, metres.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``; min included, max excluded.

    Raises:
        ValueError: (when called) if no point lies inside the range.
    """

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float]):
        self.voxel_size = [float(size) for size in voxel_size]
        self.point_cloud_range = [float(bound) for bound in point_cloud_range]
        self.spatial_shape = list(grid_shape(self.voxel_size, self.point_cloud_range))   # validates both

    def __call__(self, results: dict) -> dict:
        points = torch.from_numpy(np.ascontiguousarray(results['points'], dtype=np.float32))
        features, coordinates, point_to_voxel = voxelize_mean(points, self.voxel_size, self.point_cloud_range)
        if len(features) == 0:
            raise ValueError(f'Voxelize: all {len(points)} points of sample {results.get("sample_index", "?")} lie '
                             f'outside point_cloud_range {self.point_cloud_range} (points outside the configured '
                             'range are dropped); make the range cover the data, in its frame and units')
        point_to_voxel = point_to_voxel.numpy()
        results.update(coordinates=coordinates.numpy(), features=features.numpy(),
                       spatial_shape=list(self.spatial_shape), point_to_voxel=point_to_voxel,
                       voxel_size=list(self.voxel_size), point_cloud_range=list(self.point_cloud_range))
        if 'pts_semantic_mask' in results:
            results['gt_seg'] = majority_labels(np.asarray(results['pts_semantic_mask']), point_to_voxel,
                                                len(features))
        return results


def majority_labels(point_labels: np.ndarray, point_to_voxel: np.ndarray, num_voxels: int) -> np.ndarray:
    """The label most points of each voxel carry (the smallest label on ties).

    Args:
        point_labels: ``[P]`` non-negative integer labels.
        point_to_voxel: ``[P]`` voxel row of each point, ``-1`` for points in no voxel.
        num_voxels: number of voxels; every voxel must hold at least one point.

    Returns:
        ``[num_voxels]`` int64 labels.
    """
    point_labels = np.asarray(point_labels, dtype=np.int64)
    if len(point_labels) != len(point_to_voxel):
        raise ValueError(f'pts_semantic_mask has {len(point_labels)} entries but the cloud has '
                         f'{len(point_to_voxel)} points: keep the mask aligned with the points')
    inside = point_to_voxel >= 0
    labels, voxels = point_labels[inside], point_to_voxel[inside]
    if len(labels) and labels.min() < 0:
        raise ValueError(f'pts_semantic_mask labels must be >= 0, got {labels.min()}')
    num_classes = int(labels.max()) + 1 if len(labels) else 1
    votes = np.bincount(voxels * num_classes + labels, minlength=num_voxels * num_classes)
    return votes.reshape(num_voxels, num_classes).argmax(axis=1).astype(np.int64)
