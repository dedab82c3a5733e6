"""Geometry of 3D boxes ``(x, y, z, dx, dy, dz, yaw)``: BEV corners, rotated BEV IoU, 3D IoU, rotated BEV NMS.

Boxes follow the LiDAR convention of sparsevision: ``(x, y, z)`` is the
gravity centre in metres, ``dx`` the length along the heading, ``dy`` the
width, ``dz`` the height, and ``yaw`` the heading counter-clockwise from +x in
radians. Extra columns after the seventh (velocities, ...) are ignored.

The BEV intersection of two rotated rectangles is computed exactly: the
intersection is a convex polygon whose vertices are the corners of each box
lying inside the other plus the crossings of their edges. These (at most 24)
candidate points are ordered by angle around their mean and the shoelace
formula gives the area. Everything is vectorised over box pairs in float64,
and only pairs whose circumscribed circles touch are measured, so the cost is
``O(N * M)`` for a cheap distance test plus ``O(K)`` polygon work for the
``K`` pairs that can overlap.
"""
from typing import Optional

import numpy as np
import torch

# Tolerances of the inside and edge-crossing tests, in metres and in edge fractions. Points within them of a
# boundary count as on it, which moves an area by at most about the tolerance times the perimeter.
_INSIDE_TOLERANCE = 1e-7
_CROSSING_TOLERANCE = 1e-9
# Box pairs measured at once: bounds the memory of the polygon step (about 2 KB a pair).
_PAIRS_PER_CHUNK = 1 << 15


def box_tensor(values, name: str = 'gt_bboxes_3d') -> torch.Tensor:
    """``[M, 7]`` float32 CPU boxes from an array or tensor of ``[M, >= 7]`` boxes (columns after the seventh,
    such as velocities, dropped; an empty input gives ``[0, 7]``).

    Raises:
        ValueError: when ``values`` is not empty and not ``[M, >= 7]``.
    """
    boxes = torch.as_tensor(values.detach().cpu() if isinstance(values, torch.Tensor) else np.asarray(values))
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 7), dtype=torch.float32)
    if boxes.dim() != 2 or boxes.shape[1] < 7:
        raise ValueError(f'{name} must be [M, 7] boxes (x, y, z, dx, dy, dz, yaw), optionally with extra columns, '
                         f'got shape {tuple(boxes.shape)}')
    return boxes[:, :7].float().contiguous()


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(boxes).__name__}')
    if boxes.dim() != 2 or boxes.shape[1] < 7:
        raise ValueError(f'{name} must be [N, 7] boxes (x, y, z, dx, dy, dz, yaw), got shape {tuple(boxes.shape)}')
    if not boxes.is_floating_point():
        raise ValueError(f'{name} must be floating point, got {boxes.dtype}')


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """The four BEV corners of each box, counter-clockwise, starting front-left of the heading.

    Args:
        boxes: ``[N, 7]`` boxes ``(x, y, z, dx, dy, dz, yaw)``.

    Returns:
        ``[N, 4, 2]`` corner ``(x, y)`` in metres, same dtype as ``boxes``.
    """
    _check_boxes(boxes, 'boxes')
    half_length, half_width = boxes[:, 3:4] / 2, boxes[:, 4:5] / 2
    # Front-left, rear-left, rear-right, front-right in the box frame: counter-clockwise.
    local_x = torch.cat([half_length, -half_length, -half_length, half_length], dim=1)
    local_y = torch.cat([half_width, half_width, -half_width, -half_width], dim=1)
    cos, sin = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    corner_x = boxes[:, 0:1] + local_x * cos - local_y * sin
    corner_y = boxes[:, 1:2] + local_x * sin + local_y * cos
    return torch.stack([corner_x, corner_y], dim=-1)


def _cross(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """z of the cross product of 2D vectors on the last axis."""
    return first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]


def _corners_inside(corners: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[K, 4]``: whether each of ``corners [K, 4, 2]`` lies in (or on) the BEV rectangle of ``boxes [K, 7]``."""
    relative = corners - boxes[:, None, 0:2]
    cos, sin = boxes[:, None, 6].cos(), boxes[:, None, 6].sin()
    along = relative[..., 0] * cos + relative[..., 1] * sin
    across = -relative[..., 0] * sin + relative[..., 1] * cos
    return ((along.abs() <= boxes[:, None, 3] / 2 + _INSIDE_TOLERANCE)
            & (across.abs() <= boxes[:, None, 4] / 2 + _INSIDE_TOLERANCE))


def _edge_crossings(corners_a: torch.Tensor, corners_b: torch.Tensor):
    """Crossings of every edge of A with every edge of B: points ``[K, 16, 2]`` and validity ``[K, 16]``."""
    start_a = corners_a[:, :, None, :]                                  # [K, 4, 1, 2]
    edge_a = (corners_a.roll(-1, dims=1) - corners_a)[:, :, None, :]
    start_b = corners_b[:, None, :, :]                                  # [K, 1, 4, 2]
    edge_b = (corners_b.roll(-1, dims=1) - corners_b)[:, None, :, :]
    denominator = _cross(edge_a, edge_b)                               # [K, 4, 4]
    offset = start_b - start_a
    parallel = denominator.abs() <= 1e-12 * edge_a.norm(dim=-1) * edge_b.norm(dim=-1)
    safe = torch.where(parallel, torch.ones_like(denominator), denominator)
    along_a = _cross(offset, edge_b) / safe
    along_b = _cross(offset, edge_a) / safe
    low, high = -_CROSSING_TOLERANCE, 1 + _CROSSING_TOLERANCE
    valid = ~parallel & (along_a >= low) & (along_a <= high) & (along_b >= low) & (along_b <= high)
    points = start_a + along_a[..., None] * edge_a
    return points.flatten(1, 2), valid.flatten(1)


def _convex_polygon_area(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Area ``[K]`` of the convex hull of the valid points, given they are the vertices of a convex polygon.

    Points on the boundary of a convex polygon have distinct angles around any
    interior point, so sorting by angle around their mean orders them along the
    boundary (duplicates sit side by side and add nothing). Invalid points are
    sorted last and replaced by the first vertex, which closes the polygon
    without changing the shoelace sum. Fewer than three distinct points give 0.
    """
    weights = valid.to(points.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1)
    centre = (points * weights[..., None]).sum(dim=1, keepdim=True) / count[..., None]
    centred = points - centre
    angle = torch.atan2(centred[..., 1], centred[..., 0]).masked_fill(~valid, 4.0)   # 4 > pi: invalid last
    order = angle.argsort(dim=1)
    centred = centred.gather(1, order[..., None].expand_as(centred))
    valid = valid.gather(1, order)
    centred = torch.where(valid[..., None], centred, centred[:, :1])
    return _cross(centred, centred.roll(-1, dims=1)).sum(dim=1).abs() / 2


def _pair_intersection_areas(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV intersection areas ``[K]`` of the aligned pairs ``boxes_a[k]``, ``boxes_b[k]`` (float64)."""
    corners_a, corners_b = bev_corners(boxes_a), bev_corners(boxes_b)
    crossings, crossing_valid = _edge_crossings(corners_a, corners_b)
    points = torch.cat([corners_a, corners_b, crossings], dim=1)
    valid = torch.cat([_corners_inside(corners_a, boxes_b), _corners_inside(corners_b, boxes_a), crossing_valid],
                      dim=1)
    return _convex_polygon_area(points, valid)


def bev_intersection_areas(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Exact BEV (x, y) intersection area of every pair of rotated boxes.

    Cost: ``O(N * M)`` for a circumscribed-circle test, then ``O(K)`` (24 points
    sorted per pair) for the ``K`` pairs whose circles overlap, in chunks of
    32768 pairs.

    Args:
        boxes_a: ``[N, 7]`` boxes.
        boxes_b: ``[M, 7]`` boxes.

    Returns:
        ``[N, M]`` areas in square metres, dtype of ``boxes_a``.
    """
    _check_boxes(boxes_a, 'boxes_a')
    _check_boxes(boxes_b, 'boxes_b')
    areas = boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    if areas.numel() == 0:
        return areas
    first, second = boxes_a[:, :7].double(), boxes_b[:, :7].double()
    radius_a = first[:, 3:5].norm(dim=1) / 2
    radius_b = second[:, 3:5].norm(dim=1) / 2
    reach = torch.cdist(first[:, :2], second[:, :2]) < radius_a[:, None] + radius_b[None, :]
    rows, columns = reach.nonzero(as_tuple=True)
    for start in range(0, rows.numel(), _PAIRS_PER_CHUNK):
        row, column = rows[start:start + _PAIRS_PER_CHUNK], columns[start:start + _PAIRS_PER_CHUNK]
        areas[row, column] = _pair_intersection_areas(first[row], second[column]).to(areas.dtype)
    return areas


def bev_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Rotated BEV intersection over union of every pair of boxes (exact; see :func:`bev_intersection_areas`).

    Args:
        boxes_a: ``[N, 7]`` boxes.
        boxes_b: ``[M, 7]`` boxes.

    Returns:
        ``[N, M]`` IoU in [0, 1]; 0 where both boxes have no area.
    """
    intersection = bev_intersection_areas(boxes_a, boxes_b)
    area_a = boxes_a[:, 3] * boxes_a[:, 4]
    area_b = boxes_b[:, 3] * boxes_b[:, 4]
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union)).clamp(0, 1)


def iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """3D intersection over union of every pair of yaw-rotated boxes: BEV intersection times z overlap.

    Args:
        boxes_a: ``[N, 7]`` boxes, ``z`` at the gravity centre.
        boxes_b: ``[M, 7]`` boxes.

    Returns:
        ``[N, M]`` IoU in [0, 1]; 0 where both boxes have no volume.
    """
    intersection = bev_intersection_areas(boxes_a, boxes_b)
    top = torch.minimum((boxes_a[:, 2] + boxes_a[:, 5] / 2)[:, None], (boxes_b[:, 2] + boxes_b[:, 5] / 2)[None, :])
    bottom = torch.maximum((boxes_a[:, 2] - boxes_a[:, 5] / 2)[:, None],
                           (boxes_b[:, 2] - boxes_b[:, 5] / 2)[None, :])
    intersection = intersection * (top - bottom).clamp(min=0)
    volume_a = boxes_a[:, 3:6].prod(dim=1)
    volume_b = boxes_b[:, 3:6].prod(dim=1)
    union = volume_a[:, None] + volume_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union)).clamp(0, 1)


def bev_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: Optional[float] = None,
            pre_max_size: Optional[int] = None, post_max_size: Optional[int] = None) -> torch.Tensor:
    """Greedy non-maximum suppression with rotated BEV IoU.

    Boxes are visited by descending score; ties go to the lower index (a
    stable sort), so the result is deterministic. A box is dropped when its
    BEV IoU with a kept box is greater than ``iou_threshold``.

    Cost: the IoU matrix of the ``n <= pre_max_size`` candidates
    (:func:`bev_intersection_areas`, ``O(n^2)`` plus polygon work on touching
    pairs), then an ``O(n^2)`` boolean sweep on the CPU.

    Args:
        boxes: ``[N, 7]`` boxes.
        scores: ``[N]`` scores.
        iou_threshold: suppress boxes overlapping a kept box by more than this.
        score_threshold: drop boxes scoring below this first (``None``: keep all).
        pre_max_size: consider only this many best-scoring boxes (``None``: all).
        post_max_size: return at most this many boxes (``None``: all kept).

    Returns:
        ``[K]`` int64 indices into ``boxes`` of the kept boxes, by descending score.
    """
    _check_boxes(boxes, 'boxes')
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f'scores must be [N] with N = {boxes.shape[0]} boxes, got shape {tuple(scores.shape)}')
    candidates = torch.arange(boxes.shape[0], device=boxes.device)
    if score_threshold is not None:
        candidates = candidates[scores >= score_threshold]
    order = scores[candidates].argsort(descending=True, stable=True)
    candidates = candidates[order[:pre_max_size] if pre_max_size is not None else order]
    if candidates.numel() == 0:
        return candidates
    overlaps = (bev_iou(boxes[candidates], boxes[candidates]) > iou_threshold).cpu()
    suppressed = torch.zeros(candidates.numel(), dtype=torch.bool)
    kept = []
    for position in range(candidates.numel()):
        if suppressed[position]:
            continue
        kept.append(position)
        if post_max_size is not None and len(kept) >= post_max_size:
            break
        suppressed |= overlaps[position]
    return candidates[torch.tensor(kept, dtype=torch.long, device=boxes.device)]
