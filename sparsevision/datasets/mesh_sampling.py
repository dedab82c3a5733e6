"""Points on mesh surfaces, for voxelised test scenes and mesh-based datasets."""
import numpy as np


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points drawn uniformly over a triangle mesh's area (deterministic for a seed).

    Args:
        vertices: ``[V, 3]`` positions.
        triangles: ``[T, 3]`` vertex indices.
        count: number of points.
        seed: random seed.

    Returns:
        ``[count, 3]`` float64 points.
    """
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(triangles)]
    areas = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    if not len(corners) or areas.sum() <= 0:
        raise ValueError('the mesh has no triangles with area to sample')
    rng = np.random.default_rng(seed)
    picked = corners[rng.choice(len(corners), count, p=areas / areas.sum())]
    u, v = rng.random((2, count, 1))
    outside = (u + v) > 1   # fold points of the unit square's far half back into the triangle
    u, v = np.where(outside, 1 - u, u), np.where(outside, 1 - v, v)
    return picked[:, 0] + u * (picked[:, 1] - picked[:, 0]) + v * (picked[:, 2] - picked[:, 0])
