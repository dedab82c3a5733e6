"""Run zoo 3D models (per-point segmentation, BEV detection) on point clouds and draw their predictions."""
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

from ..model_zoo import create_model, load_config
from ..structures import bev_corners
from .image_classification import save_atomically

RANGE_FILTERS = ('PointsRangeFilter', 'ObjectRangeFilter')
# RGB per class index, reused for every segmentation model (ground, vehicle, pole, building, ...).
CLASS_COLOURS = np.array([[0.55, 0.55, 0.55], [0.90, 0.20, 0.15], [0.15, 0.45, 0.90], [0.95, 0.70, 0.10],
                          [0.20, 0.70, 0.30], [0.60, 0.30, 0.80], [0.10, 0.75, 0.80], [0.85, 0.40, 0.65]])


class PointCloudInferencer:
    """Run a zoo segmentor (``pred_point_seg``) or detector (``pred_instances_3d``) on point clouds.

    Each cloud goes through the config's test pipeline without its range filters (points outside the model's
    grid are kept and labelled -1, so labels line up with the input points) and the model's data preprocessor,
    one cloud per batch.

    Args:
        model: a zoo name or config file.
        checkpoint: weights file, ``'zoo'`` for the shipped weights, or None (untrained).
        device: where the model runs.
    """

    def __init__(self, model: str, checkpoint: Optional[str] = 'zoo', device: str = 'cpu'):
        cfg = load_config(model)
        self.name = Path(cfg.filename).stem if cfg.filename else str(model)
        self.model = create_model(cfg, checkpoint=checkpoint).to(device).eval()
        self.class_names = tuple(cfg.get('class_names', ()))
        self.box_class_names = tuple(cfg.get('box_class_names', ()))
        transforms = [transform for transform in cfg.test_dataloader.dataset.pipeline
                      if transform['type'] not in RANGE_FILTERS]
        with DefaultScope.overwrite_default_scope('sparsevision'):
            self.pipeline = Compose(transforms)

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> dict:
        """Predict one cloud ``[P, 3 + C]``: ``point_labels`` ``[P]`` (-1: outside the model's range) and/or
        ``boxes`` ``[K, 7]`` with ``box_scores`` and ``box_labels``."""
        sample = self.pipeline(dict(points=np.asarray(points, dtype=np.float32), sample_index=0))
        batch = self.model.data_preprocessor(dict(inputs=[sample['inputs']], data_samples=[sample['data_samples']]))
        output = self.model(**batch, mode='predict')[0]
        prediction = {}
        if 'pred_point_seg' in output:
            prediction['point_labels'] = output.pred_point_seg.cpu().numpy()
        if 'pred_instances_3d' in output:
            instances = output.pred_instances_3d
            prediction.update(boxes=instances.bboxes_3d.cpu().numpy(), box_scores=instances.scores_3d.cpu().numpy(),
                              box_labels=instances.labels_3d.cpu().numpy())
        if not prediction:
            raise ValueError(f'{self.name} predicts neither per-point labels nor 3D boxes; use a segmentation or '
                             'detection model')
        return prediction

    def describe(self, prediction: dict) -> dict:
        """JSON-ready summary: points per predicted class and the boxes with class names and scores."""
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
        return summary


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
