"""Surface sampling: points lie on the triangles, spread by area, deterministic per seed."""
import numpy as np
import pytest

from sparsevision.datasets.mesh_sampling import sample_surface


def test_points_on_triangles_by_area():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 3, 5]], dtype=float)
    triangles = np.array([[0, 1, 2], [3, 4, 5]])   # areas 0.5 and 4.5
    points = sample_surface(vertices, triangles, 20000, seed=1)
    on_first = points[:, 2] == 0
    assert np.all(on_first | (points[:, 2] == 5))
    assert abs(on_first.mean() - 0.1) < 0.01
    assert np.all(points[on_first, :2].sum(axis=1) <= 1 + 1e-12) and np.all(points[~on_first, :2].sum(axis=1) <= 3)
    assert np.array_equal(points, sample_surface(vertices, triangles, 20000, seed=1))


def test_mesh_without_area():
    with pytest.raises(ValueError, match='no triangles'):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10)
