"""Tests of :mod:`sparsevision.sparse.voxelize`.

Both modes are checked against a slow dict-based reference written here, one
point at a time, on random clouds (hypothesis) and hand-made edge cases; hard
mode also against spconv's ``PointToVoxel`` on a real scan. Then the batched
layout, devoxelization and autograd, argument errors, and bitwise determinism
across thread counts and chunk sizes.
"""
import math
import warnings
from pathlib import Path

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsevision.sparse import voxelize as voxelize_module
from sparsevision.sparse.voxelize import devoxelize, grid_shape, voxelize_batch, voxelize_hard, voxelize_mean

MESHES = Path(__file__).resolve().parents[3] / 'shared/data/meshes'
VOXEL_SIZE = (0.5, 0.5, 0.5)
RANGE = (-2.0, -2.0, -2.0, 2.0, 2.0, 2.0)


# ----------------------------------------------------------------------------------------------------------------------
# Reference: one point at a time, in plain Python floats (doubles).


def reference_cell(point, voxel_size, point_cloud_range):
    """``(z, y, x)`` cell of a point, or None when it is non-finite or out of range."""
    if not all(math.isfinite(value) for value in point[:3]):
        return None
    cell = []
    for axis in range(3):
        low, high, size = point_cloud_range[axis], point_cloud_range[axis + 3], voxel_size[axis]
        index = math.floor((point[axis] - low) / size)
        if not 0 <= index < round((high - low) / size):
            return None
        cell.append(index)
    return tuple(cell[::-1])


def reference_hard(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels):
    """Insertion-ordered ``{(z, y, x): [rows...]}`` with mmcv's deterministic caps."""
    voxels = {}
    for row in points.tolist():
        cell = reference_cell(row, voxel_size, point_cloud_range)
        if cell is None or (cell not in voxels and len(voxels) == max_voxels):
            continue
        members = voxels.setdefault(cell, [])
        if len(members) < max_points_per_voxel:
            members.append(row)
    return voxels


def reference_mean(points, voxel_size, point_cloud_range):
    """``(cells sorted by (z, y, x), mean rows, point_to_voxel list)``."""
    point_cells = [reference_cell(row, voxel_size, point_cloud_range) for row in points.tolist()]
    members = {}
    for row, cell in zip(points.tolist(), point_cells):
        if cell is not None:
            members.setdefault(cell, []).append(row)
    cells = sorted(members)
    row_of = {cell: row for row, cell in enumerate(cells)}
    means = [[math.fsum(column) / len(members[cell]) for column in zip(*members[cell])] for cell in cells]
    return cells, means, [-1 if cell is None else row_of[cell] for cell in point_cells]


def assert_hard_matches_reference(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels):
    voxels, coordinates, num_points = voxelize_hard(points, voxel_size, point_cloud_range, max_points_per_voxel,
                                                    max_voxels)
    expected = reference_hard(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)
    expected_voxels = torch.zeros(len(expected), max_points_per_voxel, points.shape[1], dtype=points.dtype)
    for index, rows in enumerate(expected.values()):
        expected_voxels[index, :len(rows)] = torch.tensor(rows, dtype=points.dtype)
    assert coordinates.dtype == num_points.dtype == torch.int32
    assert coordinates.tolist() == [list(cell) for cell in expected]
    assert num_points.tolist() == [len(rows) for rows in expected.values()]
    assert torch.equal(voxels, expected_voxels)


def assert_mean_matches_reference(points, voxel_size, point_cloud_range):
    features, coordinates, point_to_voxel = voxelize_mean(points, voxel_size, point_cloud_range)
    cells, means, expected_point_to_voxel = reference_mean(points, voxel_size, point_cloud_range)
    assert coordinates.dtype == torch.int32 and point_to_voxel.dtype == torch.int64
    assert coordinates.tolist() == [list(cell) for cell in cells]
    assert point_to_voxel.tolist() == expected_point_to_voxel
    expected_features = torch.tensor(means, dtype=torch.float64).reshape(len(cells), points.shape[1])
    torch.testing.assert_close(features, expected_features.to(points.dtype), rtol=1e-6, atol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------------------------------------------------
# Random clouds.

# Coordinates mix arbitrary floats with range and voxel boundaries, so points share voxels and sit on edges.
coordinate = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([-2.0, -1.5, -0.5, 0.0, 0.3, 0.5, 1.0, 2.0]))
clouds = st.lists(st.tuples(coordinate, coordinate, coordinate, st.floats(-10, 10, width=32)), max_size=60)
voxel_sizes = st.tuples(*[st.sampled_from([0.25, 0.3, 0.5, 1.0])] * 3)
# Extents that are not whole voxels round to a grid whose far edge lies inside or beyond the range maximum.
ranges = st.tuples(*[st.sampled_from([-2.0, -1.0, 0.0])] * 3, *[st.sampled_from([1.0, 2.0, 2.1])] * 3)


def as_points(rows, dtype):
    return torch.tensor(rows, dtype=dtype).reshape(len(rows), 4)


@settings(max_examples=50, deadline=None)
@given(clouds, voxel_sizes, ranges, st.integers(1, 4), st.integers(1, 20), st.sampled_from([torch.float32,
                                                                                            torch.float64]))
def test_hard_matches_reference_on_random_clouds(rows, voxel_size, point_cloud_range, max_points, max_voxels, dtype):
    assert_hard_matches_reference(as_points(rows, dtype), voxel_size, point_cloud_range, max_points, max_voxels)


@settings(max_examples=50, deadline=None)
@given(clouds, voxel_sizes, ranges, st.sampled_from([torch.float32, torch.float64]))
def test_mean_matches_reference_on_random_clouds(rows, voxel_size, point_cloud_range, dtype):
    assert_mean_matches_reference(as_points(rows, dtype), voxel_size, point_cloud_range)


# ----------------------------------------------------------------------------------------------------------------------
# Hand-made edge cases.


def random_points(count, low, high, channels=1, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(count, 3, generator=generator, dtype=torch.float64) * (high - low) + low
    return torch.cat([xyz, torch.randn(count, channels, generator=generator, dtype=torch.float64)], 1).to(dtype)


def boundary_points():
    below_max = math.nextafter(2.0, 0.0)
    rows = [(-2.0, -2.0, -2.0), (2.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, 2.0), (below_max, below_max, below_max),
            (math.nextafter(-2.0, -3.0), 0.0, 0.0), (0.5, 0.5, 0.5), (math.nextafter(0.5, 0.0), 0.5, 0.5)]
    return torch.tensor([(*row, index) for index, row in enumerate(rows)], dtype=torch.float64)


def duplicate_points():
    points = random_points(5, -1.0, 1.0)
    return torch.cat([points[:1].repeat(10, 1), points, points[2:3].repeat(4, 1)])


EDGE_CASES = {
    'one voxel': (random_points(30, 0.01, 0.49), VOXEL_SIZE, RANGE),
    'range boundaries': (boundary_points(), VOXEL_SIZE, RANGE),
    'negative range': (random_points(200, -12.0, 0.0), (0.7, 0.9, 1.1), (-10.0, -11.0, -9.0, -1.0, -2.0, -3.0)),
    'duplicates': (duplicate_points(), VOXEL_SIZE, RANGE),
    'single point': (torch.tensor([[0.1, 0.2, 0.3, 4.0]]), VOXEL_SIZE, RANGE),
    'empty': (torch.zeros(0, 4), VOXEL_SIZE, RANGE),
    'all out of range': (random_points(10, 3.0, 5.0), VOXEL_SIZE, RANGE),
    'no feature columns': (random_points(50, -2.0, 2.0)[:, :3], VOXEL_SIZE, RANGE),
    'uneven range': (random_points(100, -1.0, 3.0), (0.3, 0.3, 0.3), (-1.0, -1.0, -1.0, 2.0, 2.0, 2.0)),
}


@pytest.mark.parametrize('caps', [(5, 1000), (1, 1000), (3, 2), (1, 1)],
                         ids=lambda caps: f'points{caps[0]}-voxels{caps[1]}')
@pytest.mark.parametrize('case', EDGE_CASES)
def test_hard_edge_cases(case, caps):
    assert_hard_matches_reference(*EDGE_CASES[case], *caps)


@pytest.mark.parametrize('case', EDGE_CASES)
def test_mean_edge_cases(case):
    assert_mean_matches_reference(*EDGE_CASES[case])


def test_hard_numbers_voxels_by_first_appearance_and_caps_them():
    # Voxels (by x cell): 2, 0, 2, 1, 0, 3 -> voxel 2 first, then 0; voxel 1 and 3 come after max_voxels=2.
    points = torch.tensor([[2.5, 0.1, 0.1, 0], [0.5, 0.1, 0.1, 1], [2.2, 0.1, 0.1, 2], [1.5, 0.1, 0.1, 3],
                           [0.7, 0.1, 0.1, 4], [3.5, 0.1, 0.1, 5], [2.9, 0.1, 0.1, 6]])
    voxels, coordinates, num_points = voxelize_hard(points, (1.0, 1.0, 1.0), (0, 0, 0, 4, 1, 1), 2, 2)
    assert coordinates.tolist() == [[0, 0, 2], [0, 0, 0]]
    assert num_points.tolist() == [2, 2]
    assert voxels[:, :, 3].tolist() == [[0, 2], [1, 4]]  # point 6 exceeds max_points_per_voxel=2


def test_mean_sorts_voxels_by_key_and_points_to_them():
    points = torch.tensor([[1.5, 0.5, 0.5, 2.0], [0.5, 0.5, 1.5, 4.0], [1.2, 0.5, 0.5, 4.0], [9.0, 0.5, 0.5, 1.0]])
    features, coordinates, point_to_voxel = voxelize_mean(points, (1.0, 1.0, 1.0), (0, 0, 0, 2, 2, 2))
    assert coordinates.tolist() == [[0, 0, 1], [1, 0, 0]]  # (z, y, x): z = 0 before z = 1
    assert point_to_voxel.tolist() == [0, 1, 0, -1]
    torch.testing.assert_close(features, torch.tensor([[1.35, 0.5, 0.5, 3.0], [0.5, 0.5, 1.5, 4.0]]))


def test_huge_grid_uses_int64_keys():
    voxel_size, point_cloud_range = (0.5, 0.25, 1.0), (-1e5, -1e5, -1e5, 1e5, 1e5, 1e5)
    assert math.prod(grid_shape(voxel_size, point_cloud_range)) > 2**40
    corners = torch.tensor([[x, y, z, 0.0] for x in (-1e5, 99999.9) for y in (-1e5, 99999.9) for z in (-1e5, 99999.9)])
    points = torch.cat([corners.flip(0), random_points(200, -1e5, 1e5, seed=1)]).to(torch.float64)
    assert_mean_matches_reference(points, voxel_size, point_cloud_range)
    assert_hard_matches_reference(points, voxel_size, point_cloud_range, 2, 50)
    coordinates = voxelize_mean(points, voxel_size, point_cloud_range)[1]
    assert coordinates[-1].tolist() == [199999, 799999, 399999]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_precision_means_are_rounded_once(dtype):
    points = random_points(500, -2.0, 2.0, channels=2, dtype=dtype)
    features, coordinates, point_to_voxel = voxelize_mean(points, VOXEL_SIZE, RANGE)
    expected = voxelize_mean(points.double(), VOXEL_SIZE, RANGE)
    assert features.dtype == dtype
    assert torch.equal(features, expected[0].to(dtype))
    assert torch.equal(coordinates, expected[1]) and torch.equal(point_to_voxel, expected[2])


def test_empty_outputs_have_correct_shapes():
    voxels, coordinates, num_points = voxelize_hard(torch.zeros(0, 5), VOXEL_SIZE, RANGE, 4, 10)
    assert voxels.shape == (0, 4, 5) and coordinates.shape == (0, 3) and num_points.shape == (0,)
    features, coordinates, point_to_voxel = voxelize_mean(torch.zeros(0, 5, dtype=torch.float64), VOXEL_SIZE, RANGE)
    assert features.shape == (0, 5) and features.dtype == torch.float64
    assert coordinates.shape == (0, 3) and coordinates.dtype == torch.int32
    assert point_to_voxel.shape == (0,) and point_to_voxel.dtype == torch.int64


def test_non_finite_points_are_dropped_with_one_warning():
    points = random_points(20, -2.0, 2.0)
    points[3, 0], points[7, 2], points[9, 1], points[11, 3] = math.nan, math.inf, -math.inf, math.nan
    for run in (lambda: voxelize_mean(points, VOXEL_SIZE, RANGE),
                lambda: voxelize_hard(points, VOXEL_SIZE, RANGE, 3, 9)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            run()
        assert [str(warning.message) for warning in caught] == [
            'points: dropped 3 point(s) with NaN or infinite x, y or z']
        assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert voxelize_mean(points, VOXEL_SIZE, RANGE)[2][[3, 7, 9]].tolist() == [-1, -1, -1]
        assert_mean_matches_reference(points, VOXEL_SIZE, RANGE)  # NaN in a feature column propagates to its mean
        assert_hard_matches_reference(points[torch.arange(20) != 11], VOXEL_SIZE, RANGE, 3, 9)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        voxelize_mean(random_points(20, -2.0, 2.0), VOXEL_SIZE, RANGE)


# ----------------------------------------------------------------------------------------------------------------------
# spconv on a real scan.


@pytest.mark.skipif(not (MESHES / 'bunny10k.obj').is_file(), reason=f'{MESHES}/bunny10k.obj is missing')
@pytest.mark.parametrize('max_points_per_voxel, max_voxels', [(5, 20000), (2, 300), (64, 20000)])
def test_hard_matches_spconv_point_to_voxel(max_points_per_voxel, max_voxels):
    open3d = pytest.importorskip('open3d')
    spconv_utils = pytest.importorskip('spconv.pytorch.utils')
    mesh = open3d.io.read_triangle_mesh(str(MESHES / 'bunny10k.obj'))
    vertices = torch.from_numpy(numpy.asarray(mesh.vertices)).float()
    low = vertices.min(0).values
    xyz = (vertices - low) / (vertices.max(0).values - low).max() * 4.0 - 2.0  # about 4 m across, centred
    points = torch.cat([xyz, torch.arange(len(xyz), dtype=torch.float32)[:, None]], 1)
    voxel_size, point_cloud_range = (0.1, 0.08, 0.12), (-2.0, -2.0, -2.0, 1.9, 2.0, 2.0)
    generator = spconv_utils.PointToVoxel(vsize_xyz=list(voxel_size), coors_range_xyz=list(point_cloud_range),
                                          num_point_features=4, max_num_voxels=max_voxels,
                                          max_num_points_per_voxel=max_points_per_voxel)
    expected_voxels, expected_coordinates, expected_counts = generator(points)
    voxels, coordinates, num_points = voxelize_hard(points, voxel_size, point_cloud_range, max_points_per_voxel,
                                                    max_voxels)
    # spconv's CPU path walks the points in order and numbers voxels by first appearance, as here: the
    # outputs agree exactly, order included, not only as sets.
    assert 0 < len(coordinates) <= max_voxels
    assert torch.equal(coordinates, expected_coordinates)
    assert torch.equal(num_points, expected_counts)
    assert torch.equal(voxels, expected_voxels)


# ----------------------------------------------------------------------------------------------------------------------
# Batches, devoxelization, autograd.


def test_batch_stacks_samples_with_a_batch_column():
    clouds = [random_points(300, -2.5, 2.5, seed=1), torch.zeros(0, 4, dtype=torch.float64),
              random_points(200, -1.0, 2.5, seed=2)]
    batch = voxelize_batch(clouds, VOXEL_SIZE, RANGE)
    assert batch.spatial_shape == (8, 8, 8)
    assert batch.indices.dtype == batch.num_points_per_voxel.dtype == torch.int32
    offset = 0
    for index, points in enumerate(clouds):
        features, coordinates, point_to_voxel = voxelize_mean(points, VOXEL_SIZE, RANGE)
        rows = slice(offset, offset + len(features))
        assert torch.equal(batch.features[rows], features)
        assert torch.equal(batch.indices[rows, 1:], coordinates) and (batch.indices[rows, 0] == index).all()
        assert torch.equal(batch.num_points_per_voxel[rows],
                           torch.bincount(point_to_voxel[point_to_voxel >= 0], minlength=len(features)).int())
        offset += len(features)
    assert len(batch.features) == offset
    point_to_voxel = batch.point_to_voxel
    assert point_to_voxel.shape == (500,) and (point_to_voxel >= -1).all() and point_to_voxel.max() < offset
    kept = point_to_voxel >= 0
    assert torch.equal(batch.indices[point_to_voxel[kept], 0], (torch.arange(500) >= 300)[kept].int() * 2)


def test_batch_hard_mode_and_spconv_encoder():
    spconv = pytest.importorskip('spconv.pytorch')
    clouds = [random_points(400, -2.0, 2.0, seed=seed, dtype=torch.float32) for seed in range(2)]
    batch = voxelize_batch(clouds, VOXEL_SIZE, RANGE, mode='hard', max_points_per_voxel=3, max_voxels=100)
    first = voxelize_hard(clouds[0], VOXEL_SIZE, RANGE, 3, 100)
    assert batch.features.shape == (200, 3, 4) and torch.equal(batch.features[:100], first[0])
    assert torch.equal(batch.num_points_per_voxel[:100], first[2])
    point_to_voxel = batch.point_to_voxel
    kept = point_to_voxel >= 0
    assert int(kept.sum()) == int(batch.num_points_per_voxel.sum())
    assert torch.equal(batch.indices[point_to_voxel[kept], 0], (torch.arange(800) >= 400)[kept].int())
    # A SECOND-style encoder: mean of the kept points, then a submanifold convolution.
    mean_features = batch.features.sum(1) / batch.num_points_per_voxel[:, None]
    tensor = spconv.SparseConvTensor(mean_features, batch.indices, list(batch.spatial_shape), batch_size=2)
    output = spconv.SubMConv3d(4, 8, 3, indice_key='subm1')(tensor)
    assert output.features.shape == (200, 8) and torch.equal(output.indices, batch.indices)


def test_devoxelize_gathers_voxel_rows_and_zeros_dropped_points():
    points = random_points(100, -2.5, 2.5, channels=2)
    features, _, point_to_voxel = voxelize_mean(points, VOXEL_SIZE, RANGE)
    per_point = devoxelize(features, point_to_voxel)
    kept = point_to_voxel >= 0
    assert per_point.shape == (100, 5) and not kept.all()
    assert torch.equal(per_point[kept], features[point_to_voxel[kept]])
    assert (per_point[~kept] == 0).all()
    assert devoxelize(torch.zeros(0, 3), torch.full((4,), -1)).shape == (4, 3)
    assert devoxelize(torch.zeros(5, 3), torch.zeros(0, dtype=torch.int64)).shape == (0, 3)


def test_gradients_flow_through_voxelize_and_devoxelize():
    points = random_points(12, -1.0, 1.0).requires_grad_()
    point_to_voxel = torch.tensor([0, 2, -1, 1, 2, -1, 0])
    assert torch.autograd.gradcheck(lambda features: devoxelize(features, point_to_voxel),
                                    (torch.randn(3, 2, dtype=torch.float64, requires_grad=True),))
    assert torch.autograd.gradcheck(lambda cloud: voxelize_mean(cloud, (1.0, 1.0, 1.0), RANGE)[0], (points,))
    assert torch.autograd.gradcheck(lambda cloud: voxelize_hard(cloud, (1.0, 1.0, 1.0), RANGE, 2, 3)[0], (points,))


# ----------------------------------------------------------------------------------------------------------------------
# Errors.

GOOD = dict(points=torch.zeros(4, 4), voxel_size=VOXEL_SIZE, point_cloud_range=RANGE, max_points_per_voxel=2,
            max_voxels=5)
BAD_ARGUMENTS = [
    (dict(points=torch.zeros(4)), r'points must be \[N, 3 \+ C\].*\(4,\)'),
    (dict(points=torch.zeros(4, 2)), r'points must be \[N, 3 \+ C\].*\(4, 2\)'),
    (dict(points=torch.zeros(4, 4, dtype=torch.int32)), 'points must be floating point, got torch.int32'),
    (dict(points=[[0.0, 0.0, 0.0]]), 'points must be a torch.Tensor'),
    (dict(voxel_size=(0.5, 0.0, 0.5)), r'voxel_size values must be finite and > 0'),
    (dict(voxel_size=(0.5, -1.0, 0.5)), r'voxel_size values must be finite and > 0'),
    (dict(voxel_size=(0.5, 0.5)), r'voxel_size needs 3 values'),
    (dict(voxel_size=0.5), r'must be sequences of numbers'),
    (dict(point_cloud_range=(0, 0, 0, 1, 1)), r'point_cloud_range needs 6 values'),
    (dict(point_cloud_range=(0, 0, 0, 1, 0, 1)), r'minimum must be < maximum'),
    (dict(point_cloud_range=(0, 0, 0, 1, math.nan, 1)), r'point_cloud_range values must be finite'),
    (dict(voxel_size=(1.0, 1.0, 1.0), point_cloud_range=(0, 0, 0, 0.4, 1, 1)), r'1 to 2147483647 cells per axis'),
    (dict(voxel_size=(1e-6, 1.0, 1.0), point_cloud_range=(-1e4, 0, 0, 1e4, 1, 1)), r'1 to 2147483647 cells per axis'),
    (dict(voxel_size=(1e-3, 1e-3, 1e-3), point_cloud_range=(-1e3, -1e3, -1e3, 1e3, 1e3, 1e3)),
     r'more than the 2\*\*62'),
    (dict(max_points_per_voxel=0), r'max_points_per_voxel must be an integer >= 1, got 0'),
    (dict(max_voxels=0), r'max_voxels must be an integer >= 1, got 0'),
    (dict(max_voxels=2.5), r'max_voxels must be an integer >= 1, got 2.5'),
]


@pytest.mark.parametrize('changes, message', BAD_ARGUMENTS, ids=[message for _, message in BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error(changes, message):
    arguments = {**GOOD, **changes}
    with pytest.raises(ValueError, match=message):
        voxelize_hard(**arguments)
    if not {'max_points_per_voxel', 'max_voxels'} & set(changes):
        arguments.pop('max_points_per_voxel'), arguments.pop('max_voxels')
        with pytest.raises(ValueError, match=message):
            voxelize_mean(**arguments)


@pytest.mark.parametrize('arguments, kwargs, message', [
    ([torch.zeros(2, 4)], dict(mode='max'), "mode must be 'mean' or 'hard'"),
    ([torch.zeros(2, 4)], dict(mode='hard', max_voxels=3), r"takes keyword arguments \['max_points_per_voxel'"),
    ([torch.zeros(2, 4)], dict(max_voxels=3), r"mode 'mean' takes keyword arguments \[\]"),
    ([], {}, 'points_list is empty'),
    ([torch.zeros(2, 4), torch.zeros(2, 5)], {}, r'points_list\[1\] is \(2, 5\)'),
    ([torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)], {}, r'points_list\[1\] is .*torch.float64'),
    ([torch.zeros(2, 4), torch.zeros(2)], {}, r'points_list\[1\] must be \[N, 3 \+ C\]'),
])
def test_bad_batches_raise_value_error(arguments, kwargs, message):
    with pytest.raises(ValueError, match=message):
        voxelize_batch(arguments, VOXEL_SIZE, RANGE, **kwargs)


@pytest.mark.parametrize('features, point_to_voxel, message', [
    (torch.zeros(3, 2), torch.tensor([0, 3]), r'must lie in \[-1, 3\), got range \[0, 3\]'),
    (torch.zeros(3, 2), torch.tensor([0, -2]), r'must lie in \[-1, 3\), got range \[-2, 0\]'),
    (torch.zeros(3, 2), torch.tensor([0, 1], dtype=torch.int32), 'must be a 1-D int64 tensor'),
    (torch.zeros(3, 2), torch.zeros(2, 1, dtype=torch.int64), 'must be a 1-D int64 tensor'),
    (torch.tensor(1.0), torch.tensor([0]), r'voxel_features must be a tensor \[V, ...\]'),
])
def test_bad_devoxelize_arguments_raise_value_error(features, point_to_voxel, message):
    with pytest.raises(ValueError, match=message):
        devoxelize(features, point_to_voxel)


# ----------------------------------------------------------------------------------------------------------------------
# Determinism.


def test_outputs_are_bitwise_identical_across_thread_counts():
    points = random_points(200_000, -52.0, 52.0, channels=2, seed=3, dtype=torch.float32)
    points[::7, :3] = points[::7, :3].round()  # many points on voxel boundaries
    voxel_size, point_cloud_range = (0.2, 0.2, 0.3), (-50.0, -50.0, -5.0, 50.0, 50.0, 3.0)
    points[:, 2] = points[:, 2] / 10.0

    def run():
        return (*voxelize_mean(points, voxel_size, point_cloud_range),
                *voxelize_hard(points, voxel_size, point_cloud_range, 5, 20_000),
                *voxelize_batch([points, points[:1000]], voxel_size, point_cloud_range))

    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 1, 2):
            torch.set_num_threads(count)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    assert results[0][0].shape[0] > 10_000
    for result in results[1:]:
        for expected, actual in zip(results[0], result):
            assert torch.equal(expected, actual) if isinstance(expected, torch.Tensor) else expected == actual


def one_pass_mean(points, voxel_size, point_cloud_range):
    """Mean voxelization in one pass over the whole cloud: a stable sort of every kept point's voxel key, then a
    float64 segment mean per voxel, cast back once."""
    depth, height, width = grid_shape(voxel_size, point_cloud_range)
    low, sizes = torch.tensor(point_cloud_range[:3], dtype=torch.float64), torch.tensor(voxel_size, dtype=torch.float64)
    cells = torch.floor((points[:, :3].double() - low) / sizes)
    inside = torch.isfinite(cells).all(1) & (cells >= 0).all(1) & (cells < torch.tensor([width, height, depth])).all(1)
    kept = inside.nonzero().squeeze(1)
    x, y, z = cells[kept].long().unbind(1)
    keys, order = ((z * height + y) * width + x).sort(stable=True)
    unique_keys, counts = torch.unique_consecutive(keys, return_counts=True)
    means = torch.segment_reduce(points[kept[order]].double(), 'mean', lengths=counts, axis=0).to(points.dtype)
    coordinates = torch.stack([unique_keys // (height * width), unique_keys // width % height, unique_keys % width], 1)
    point_to_voxel = torch.full((len(points),), -1)
    point_to_voxel[kept[order]] = torch.repeat_interleave(torch.arange(len(unique_keys)), counts)
    return means, coordinates.int(), point_to_voxel


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('chunk_points', [7, 4096, 1 << 20])
def test_means_are_bitwise_the_same_in_chunks(monkeypatch, chunk_points, dtype):
    # 20,000 points in 64 voxels: every voxel has points in every chunk. Features from 1e-8 to 1e8 make a float64
    # sum depend on its order, so adding up per-chunk sums instead of continuing each voxel's sum shows (float64).
    generator = torch.Generator().manual_seed(5)
    xyz = torch.rand(20_000, 3, generator=generator, dtype=torch.float64) * 4.4 - 2.2   # some points out of range
    features = torch.randn(20_000, 2, generator=generator, dtype=torch.float64).sign() * 10 ** (
        torch.rand(20_000, 2, generator=generator, dtype=torch.float64) * 16 - 8)
    points = torch.cat([xyz, features], 1).to(dtype)
    points[::997, 1] = math.nan
    voxel_size, point_cloud_range = (1.0, 1.0, 1.0), (-2.0, -2.0, -2.0, 2.0, 2.0, 2.0)
    expected = one_pass_mean(points, voxel_size, point_cloud_range)
    monkeypatch.setattr(voxelize_module, 'CHUNK_POINTS', chunk_points)
    with pytest.warns(UserWarning, match='dropped 21 point'):
        actual = voxelize_mean(points, voxel_size, point_cloud_range)
    assert len(actual[1]) == 64
    for expected_tensor, actual_tensor in zip(expected, actual):
        assert torch.equal(expected_tensor, actual_tensor)
