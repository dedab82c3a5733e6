"""Box geometry: BEV corners, exact rotated BEV IoU, 3D IoU and rotated BEV NMS."""
import math

import pytest
import torch

from sparsevision.structures import bev_corners, bev_intersection_areas, bev_iou, bev_nms, iou_3d


def box(x=0.0, y=0.0, z=0.0, dx=2.0, dy=1.0, dz=1.0, yaw=0.0):
    return [x, y, z, dx, dy, dz, yaw]


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def clip_polygon(subject, clipper):
    """Sutherland-Hodgman in plain Python: ``subject`` clipped by the counter-clockwise convex ``clipper``."""
    output = list(subject)
    for index in range(len(clipper)):
        (ax, ay), (bx, by) = clipper[index], clipper[(index + 1) % len(clipper)]

        def side(point):
            return (bx - ax) * (point[1] - ay) - (by - ay) * (point[0] - ax)

        polygon, output = output, []
        for position, current in enumerate(polygon):
            previous = polygon[position - 1]
            if side(current) >= 0:
                if side(previous) < 0:
                    output.append(crossing(previous, current, side))
                output.append(current)
            elif side(previous) >= 0:
                output.append(crossing(previous, current, side))
        if not output:
            return []
    return output


def crossing(first, second, side):
    fraction = side(first) / (side(first) - side(second))
    return (first[0] + fraction * (second[0] - first[0]), first[1] + fraction * (second[1] - first[1]))


def polygon_area(points):
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def reference_intersection(first, second):
    corners = bev_corners(torch.tensor([first, second], dtype=torch.float64)).tolist()
    polygon = clip_polygon([tuple(p) for p in corners[0]], [tuple(p) for p in corners[1]])
    return polygon_area(polygon) if len(polygon) >= 3 else 0.0


def test_corners_counter_clockwise_and_rotated():
    corners = bev_corners(boxes(box(x=1, y=2, dx=4, dy=2, yaw=math.pi / 2)))[0]
    expected = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]])  # front-left first, heading +y
    torch.testing.assert_close(corners, expected, atol=1e-6, rtol=0)
    signed_area = sum(float(corners[i, 0] * corners[i - 3, 1] - corners[i - 3, 0] * corners[i, 1]) for i in range(4))
    assert signed_area > 0   # counter-clockwise


def test_identical_boxes_have_iou_one():
    data = boxes(box(yaw=0.0), box(x=30, y=-7, dx=4.2, dy=1.9, yaw=1.234), box(x=-3, dx=0.5, dy=0.5, yaw=-2.5))
    torch.testing.assert_close(bev_iou(data, data).diag(), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(iou_3d(data, data).diag(), torch.ones(3), atol=1e-6, rtol=0)


def test_disjoint_boxes_have_iou_zero():
    first = boxes(box(), box(dx=3, dy=3, yaw=0.7))
    second = boxes(box(x=10), box(x=3.0, y=3.0, dx=2, dy=2, yaw=0.0))   # second pair: circles touch, boxes do not
    assert bev_iou(first, second).diag().tolist() == [0.0, 0.0]
    stacked = boxes(box(z=0.0, dz=1.0), box(z=5.0, dz=1.0))   # same footprint, apart in z
    assert iou_3d(stacked[:1], stacked[1:]).item() == 0.0
    assert bev_iou(stacked[:1], stacked[1:]).item() == pytest.approx(1.0)


def test_axis_aligned_overlap_matches_closed_form():
    first = boxes(box(x=0, y=0, z=0, dx=4, dy=2, dz=2))
    second = boxes(box(x=1, y=0.5, z=0.5, dx=4, dy=2, dz=2), box(x=2, y=0, z=0, dx=2, dy=2, dz=2, yaw=math.pi))
    overlap_area = torch.tensor([3.0 * 1.5, 1.0 * 2.0])
    torch.testing.assert_close(bev_intersection_areas(first, second)[0], overlap_area, atol=1e-5, rtol=0)
    torch.testing.assert_close(bev_iou(first, second)[0], overlap_area / (8 + torch.tensor([8.0, 4.0]) - overlap_area),
                               atol=1e-6, rtol=0)
    overlap_volume = overlap_area * torch.tensor([1.5, 2.0])
    torch.testing.assert_close(iou_3d(first, second)[0],
                               overlap_volume / (16 + torch.tensor([16.0, 8.0]) - overlap_volume), atol=1e-6, rtol=0)


def test_rotated_square_octagon_hand_case():
    square, diamond = boxes(box(dx=2, dy=2)), boxes(box(dx=2, dy=2, yaw=math.pi / 4))
    assert bev_intersection_areas(square, diamond).item() == pytest.approx(8 * (math.sqrt(2) - 1), abs=1e-6)
    # A box rotated by pi (or a square by pi/2) covers the same footprint.
    turned = boxes(box(dx=4, dy=1, yaw=0.3), box(dx=4, dy=1, yaw=0.3 + math.pi))
    assert bev_iou(turned[:1], turned[1:]).item() == pytest.approx(1.0, abs=1e-6)


def test_rotated_iou_matches_exact_clipping_and_raster():
    generator = torch.Generator().manual_seed(0)
    count = 200
    centres = torch.rand(count, 2, generator=generator) * 4
    sizes = 0.5 + torch.rand(count, 2, generator=generator) * 4
    yaws = (torch.rand(count, generator=generator) - 0.5) * 2 * math.pi
    data = torch.cat([centres, torch.zeros(count, 1), sizes, torch.ones(count, 1), yaws[:, None]], dim=1).double()
    first, second = data[: count // 2], data[count // 2:]
    areas = bev_intersection_areas(first, second).diag()
    expected = torch.tensor([reference_intersection(a, b) for a, b in zip(first.tolist(), second.tolist())],
                            dtype=torch.float64)
    assert (expected > 0).sum() > 50   # most pairs overlap, many partially
    torch.testing.assert_close(areas, expected, atol=1e-9, rtol=1e-9)
    # Independent of any polygon code: count the cells of a fine raster inside both boxes.
    step = 0.01
    grid = torch.arange(-4, 8, step, dtype=torch.float64) + step / 2
    xs, ys = torch.meshgrid(grid, grid, indexing='xy')
    for a, b in list(zip(first.tolist(), second.tolist()))[:5]:
        inside = torch.ones_like(xs, dtype=torch.bool)
        for x, y, _, dx, dy, _, yaw in (a, b):
            along = (xs - x) * math.cos(yaw) + (ys - y) * math.sin(yaw)
            across = -(xs - x) * math.sin(yaw) + (ys - y) * math.cos(yaw)
            inside &= (along.abs() <= dx / 2) & (across.abs() <= dy / 2)
        raster = inside.sum().item() * step ** 2
        assert bev_intersection_areas(torch.tensor([a]), torch.tensor([b])).item() == pytest.approx(raster, abs=0.05)


def test_matches_shapely_when_installed():
    geometry = pytest.importorskip('shapely.geometry')
    generator = torch.Generator().manual_seed(1)
    data = torch.cat([torch.rand(40, 2, generator=generator) * 3, torch.zeros(40, 1),
                      0.5 + torch.rand(40, 2, generator=generator) * 3, torch.ones(40, 1),
                      torch.rand(40, 1, generator=generator) * 6], dim=1).double()
    polygons = [geometry.Polygon(corners) for corners in bev_corners(data).tolist()]
    expected = torch.tensor([[p.intersection(q).area / p.union(q).area for q in polygons] for p in polygons])
    torch.testing.assert_close(bev_iou(data, data), expected.double(), atol=1e-9, rtol=0)


def test_iou_is_symmetric_and_in_unit_range():
    generator = torch.Generator().manual_seed(2)
    data = torch.cat([torch.rand(60, 3, generator=generator) * 6, 0.3 + torch.rand(60, 3, generator=generator) * 3,
                      torch.rand(60, 1, generator=generator) * 7 - 3.5], dim=1)
    for measure in (bev_iou, iou_3d):
        iou = measure(data, data)
        torch.testing.assert_close(iou, iou.T, atol=1e-6, rtol=0)
        assert iou.min() >= 0 and iou.max() <= 1
    assert bev_iou(data[:0], data).shape == (0, 60)


def test_bad_boxes_raise_clear_errors():
    with pytest.raises(ValueError, match=r'\[N, 7\]'):
        bev_iou(torch.zeros(3, 5), torch.zeros(2, 7))
    with pytest.raises(ValueError, match='floating point'):
        bev_iou(torch.zeros(3, 7, dtype=torch.long), torch.zeros(2, 7))
    with pytest.raises(ValueError, match='scores'):
        bev_nms(torch.zeros(3, 7), torch.zeros(2), 0.5)


def test_nms_keeps_best_and_removes_overlaps():
    data = boxes(box(x=0.0), box(x=0.1, yaw=0.05), box(x=10.0), box(x=0.5, y=0.2), box(x=1.9))
    scores = torch.tensor([0.6, 0.9, 0.3, 0.5, 0.8])
    kept = bev_nms(data, scores, iou_threshold=0.3)
    assert kept.tolist() == [1, 4, 2]   # 0 and 3 overlap 1 heavily; 4 barely touches 1; 2 is far away
    assert bev_nms(data, scores, iou_threshold=0.3, score_threshold=0.7).tolist() == [1, 4]
    assert bev_nms(data, scores, iou_threshold=0.3, post_max_size=2).tolist() == [1, 4]
    assert bev_nms(data, scores, iou_threshold=0.3, pre_max_size=2).tolist() == [1, 4]
    assert bev_nms(data, scores, iou_threshold=0.99).tolist() == [1, 4, 0, 3, 2]
    assert bev_nms(data[:0], scores[:0], iou_threshold=0.3).tolist() == []


def test_nms_breaks_ties_by_index():
    data = boxes(box(x=5.0), box(), box(x=0.05), box(x=-0.05))
    scores = torch.tensor([0.5, 0.7, 0.7, 0.7])
    for _ in range(3):
        assert bev_nms(data, scores, iou_threshold=0.5).tolist() == [1, 0]
    assert bev_nms(data[[0, 3, 2, 1]], scores[[0, 3, 2, 1]], iou_threshold=0.5).tolist() == [1, 0]
