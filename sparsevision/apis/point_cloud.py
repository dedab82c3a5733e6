"""Run zoo 3D models (per-point segmentation, BEV detection, single-object classification) on point clouds and
draw their predictions."""
import inspect
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

from ..datasets.shapes import voxelise_points
from ..model_zoo import create_model, load_config
from ..registry import DATASETS
from ..structures import bev_corners
from .image_classification import save_atomically
from .model_kinds import POINT_CLOUD_MODEL, SHAPE_CLASSIFIER, check_model_kind, model_name

RANGE_FILTERS = ('PointsRangeFilter', 'ObjectRangeFilter')
MAX_DRAWN_POINTS = 500_000   # a bird's-eye view of a larger cloud draws a random subset of this many points
# RGB per class index, reused for every segmentation model (ground, vehicle, pole, building, ...).
CLASS_COLOURS = np.array([[0.55, 0.55, 0.55], [0.90, 0.20, 0.15], [0.15, 0.45, 0.90], [0.95, 0.70, 0.10],
                          [0.20, 0.70, 0.30], [0.60, 0.30, 0.80], [0.10, 0.75, 0.80], [0.85, 0.40, 0.65]])


class PointCloudInferencer:
    """Run a zoo segmentor (``pred_point_seg``), detector (``pred_instances_3d``) or single-object classifier
    (``pred_label``) on point clouds.

    Each cloud goes through the config's test pipeline without its range filters (points outside the model's
    grid are kept and labelled -1, so labels line up with the input points) and the model's data preprocessor,
    one cloud per batch. For a single-object classifier (trained on :class:`ShapeClassificationDataset`), the
    cloud is first centred, scaled into the unit sphere and voxelised as that dataset does, so it must hold one
    object; its size and units do not matter.

    Args:
        model: a zoo name or config file.
        checkpoint: weights file, ``'zoo'`` for the shipped weights, or None (untrained).
        device: where the model runs.

    Raises:
        ValueError: for a model that takes no point clouds, naming those that do.
    """

    def __init__(self, model: str, checkpoint: Optional[str] = 'zoo', device: str = 'cpu'):
        cfg = load_config(model)
        kind = check_model_kind(cfg, model, [POINT_CLOUD_MODEL, SHAPE_CLASSIFIER], type(self).__name__)
        self.name = model_name(cfg, model)
        self.model = create_model(cfg, checkpoint=checkpoint).to(device).eval()
        self.class_names = tuple(cfg.get('class_names', ()))
        self.box_class_names = tuple(cfg.get('box_class_names', ()))
        dataset_cfg = cfg.test_dataloader.dataset
        self.shape_grid = shape_grid(dataset_cfg) if kind == SHAPE_CLASSIFIER else None
        transforms = [transform for transform in dataset_cfg.pipeline if transform['type'] not in RANGE_FILTERS]
        with DefaultScope.overwrite_default_scope('sparsevision'):
            self.pipeline = Compose(transforms)

    def _sample(self, points: np.ndarray) -> dict:
        """What the pipeline starts from: the points, or for a single-object classifier, its voxelised shape."""
        if self.shape_grid is None:
            return dict(points=points, sample_index=0)
        coordinates, features = voxelise_points(fit_into_unit_sphere(points[:, :3]), self.shape_grid)
        return dict(coordinates=coordinates, features=features, spatial_shape=[self.shape_grid] * 3, sample_index=0)

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> dict:
        """Predict one cloud ``[P, 3 + C]``: ``point_labels`` ``[P]`` (-1: outside the model's range) and/or
        ``boxes`` ``[K, 7]`` with ``box_scores`` and ``box_labels``, or for a classifier ``pred_label``,
        ``pred_class``, ``pred_score`` and ``scores`` (per class)."""
        sample = self.pipeline(self._sample(np.asarray(points, dtype=np.float32)))
        batch = self.model.data_preprocessor(dict(inputs=[sample['inputs']], data_samples=[sample['data_samples']]))
        output = self.model(**batch, mode='predict')[0]
        prediction = {}
        if 'pred_point_seg' in output:
            prediction['point_labels'] = output.pred_point_seg.cpu().numpy()
        if 'pred_instances_3d' in output:
            instances = output.pred_instances_3d
            prediction.update(boxes=instances.bboxes_3d.cpu().numpy(), box_scores=instances.scores_3d.cpu().numpy(),
                              box_labels=instances.labels_3d.cpu().numpy())
        if 'pred_label' in output:
            prediction.update(pred_label=int(output.pred_label), pred_class=self.class_names[int(output.pred_label)],
                              pred_score=float(output.pred_score.max()), scores=output.pred_score.cpu().tolist())
        if not prediction:
            raise ValueError(f'{self.name} predicts neither per-point labels, 3D boxes nor a class; use a '
                             'segmentation, detection or classification model')
        return prediction

    def describe(self, prediction: dict) -> dict:
        """JSON-ready summary: points per predicted class, the boxes with class names and scores, and the class
        of a classifier with its score."""
        summary = {}
        if 'point_labels' in prediction:
            labels = prediction['point_labels']
            summary['points_per_class'] = {name: int((labels == index).sum())
                                           for index, name in enumerate(self.class_names)}
            summary['points_outside_range'] = int((labels < 0).sum())
        if 'boxes' in prediction:
            summary['boxes'] = [dict(label=self.box_class_names[int(label)], score=round(float(score), 4),
                                     box_xyz_lwh_yaw=[round(float(value), 3) for value in box])
                                for box, score, label in zip(prediction['boxes'], prediction['box_scores'],
                                                             prediction['box_labels'])]
        if 'pred_class' in prediction:
            summary.update(pred_class=prediction['pred_class'], pred_score=round(prediction['pred_score'], 4))
        return summary


def shape_grid(dataset_cfg) -> int:
    """Voxels per axis of a single-object classifier's dataset: its config's ``grid`` or the class default."""
    default = inspect.signature(DATASETS.get(dataset_cfg.type)).parameters['grid'].default
    return dataset_cfg.get('grid', default)


def fit_into_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre ``[P, 3]`` points on their mean and scale them so the farthest lies at 1 / 1.05, as
    :class:`~sparsevision.datasets.ShapeClassificationDataset` fits its samples before voxelising them."""
    centred = xyz - xyz.mean(axis=0)
    return centred / max(np.linalg.norm(centred, axis=1).max() * 1.05, np.finfo(np.float32).tiny)


def drawn_rows(num_points: int, limit: int = MAX_DRAWN_POINTS) -> Optional[np.ndarray]:
    """The points a bird's-eye view draws: all of them (``None``) up to ``limit``, else the sorted rows of a random
    subset of ``limit`` points, the same for every run (seed 0). A picture of 880 x 880 pixels shows no more."""
    if num_points <= limit:
        return None
    return np.sort(np.random.default_rng(0).choice(num_points, limit, replace=False, shuffle=False))


def draw_bird_eye_view(points: np.ndarray, point_labels: Optional[np.ndarray], boxes: Optional[np.ndarray],
                       class_names: Sequence[str], out_file: Union[str, Path], title: str = '',
                       box_scores: Optional[np.ndarray] = None, view_range: Optional[float] = None) -> Path:
    """A top view (x up, y left, as in the LiDAR frame) of the points coloured by predicted class (grey by height
    without labels) with the boxes drawn; written atomically as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, axis = plt.subplots(figsize=(8, 8))
    x, y = points[:, 0], points[:, 1]
    if point_labels is not None:
        colours = np.where((point_labels >= 0)[:, None], CLASS_COLOURS[np.clip(point_labels, 0, None)
                                                                       % len(CLASS_COLOURS)], 0.85)
        handles = [Line2D([], [], marker='o', linestyle='', color=CLASS_COLOURS[index % len(CLASS_COLOURS)],
                          label=name) for index, name in enumerate(class_names)]
    else:
        heights = points[:, 2]
        colours = plt.cm.viridis((heights - heights.min()) / max(np.ptp(heights), 1e-6))
        handles = []
    axis.scatter(-y, x, s=1.0, c=colours, linewidths=0)
    boxes = np.zeros((0, 7)) if boxes is None else boxes
    for index, (box, corners) in enumerate(zip(boxes, bev_corners(torch.as_tensor(boxes)).numpy())):
        closed = np.vstack([corners, corners[:1]])
        axis.plot(-closed[:, 1], closed[:, 0], color='black', linewidth=1.0)
        front = corners[[0, 3]].mean(axis=0)   # the heading: centre -> middle of the front edge
        axis.plot([-box[1], -front[1]], [box[0], front[0]], color='black', linewidth=1.0)
        if box_scores is not None:
            axis.text(-box[1], box[0], f'{box_scores[index]:.2f}', fontsize=6, color='black')
    if len(boxes):
        handles.append(Line2D([], [], color='black', label='detected box'))
    if handles:
        axis.legend(handles=handles, loc='upper right', fontsize=8, markerscale=2)
    if view_range is not None:
        axis.set_xlim(-view_range, view_range)
        axis.set_ylim(-view_range, view_range)
    axis.set_aspect('equal')
    axis.set_xlabel('-y (m, right)')
    axis.set_ylabel('x (m, forward)')
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return save_atomically(out_file, lambda path: figure.savefig(path, dpi=110, format='png'),
                           on_done=lambda: plt.close(figure))


def stereo_motorcycle_points(step: int = 2) -> np.ndarray:
    """A real scene: scikit-image's Middlebury *Motorcycle* ground-truth disparity back-projected to points.

    Uses the calibration given for the down-sampled images (focal length 994.978 px, principal point
    (311.193, 254.877) px, disparity offset 31.086 px, baseline 0.193 m). The camera frame (x right, y down,
    z forward) is turned into the LiDAR frame (x forward, y left, z up) with the camera at the origin. Every
    ``step``-th pixel per axis is used; pixels without ground truth (infinite disparity) are left out.

    Returns:
        ``[P, 3]`` float32 (x, y, z) in metres.
    """
    import skimage.data

    _, _, disparity = skimage.data.stereo_motorcycle()
    focal, centre_u, centre_v, offset, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    rows, columns = np.mgrid[0:disparity.shape[0]:step, 0:disparity.shape[1]:step]
    disparity = disparity[::step, ::step]
    valid = np.isfinite(disparity) & (disparity + offset > 0)
    depth = focal * baseline / (disparity[valid] + offset)
    right = (columns[valid] - centre_u) * depth / focal
    down = (rows[valid] - centre_v) * depth / focal
    return np.stack([depth, -right, -down], axis=1).astype(np.float32)
