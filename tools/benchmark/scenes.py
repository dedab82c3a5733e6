"""Benchmark inputs: a LiDAR-like street scene ray-cast with open3d, voxelised (shared by the benchmark scripts).

The mesh helpers live in :mod:`sparsevision.datasets.street_scenes` (shared with the simulated LiDAR dataset); this
file keeps the benchmark's own fixed street layout, so its scene stays the same across releases.
"""
from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from sparsevision.datasets.street_scenes import box_mesh, building_row, pole_mesh, spinning_lidar_directions

VOXEL_SIZE_M = 0.1


@dataclass
class Sites:
    """One batch sample of occupied voxels: ``indices [N, 4]`` int32 (batch 0, z, y, x) and the grid (z, y, x)."""

    label: str
    indices: torch.Tensor
    spatial_shape: List[int]


def voxelise(points: np.ndarray, voxel_size: float, label: str) -> Sites:
    """Occupied ``voxel_size`` cells of ``[P, 3]`` (x, y, z) points, sorted by (z, y, x)."""
    cells = np.floor((points - points.min(axis=0)) / voxel_size).astype(np.int64)
    extent = cells.max(axis=0) + 1
    keys = np.unique((cells[:, 2] * extent[1] + cells[:, 1]) * extent[0] + cells[:, 0])
    x, y, z = keys % extent[0], keys // extent[0] % extent[1], keys // (extent[0] * extent[1])
    indices = np.stack([np.zeros_like(keys), z, y, x], axis=1).astype(np.int32)
    return Sites(f'{label} {len(keys) / 1000:.0f}k sites', torch.from_numpy(indices),
                 [int(extent[2]), int(extent[1]), int(extent[0])])


def street_meshes(rng: np.random.Generator):
    """Ground, buildings on both sides of a 24 m street, parked and driving cars, and poles (open3d meshes)."""
    meshes = [box_mesh((0.0, 0.0, -0.05), (160.0, 160.0, 0.1))]
    for side in (-1, 1):
        meshes += building_row(rng, side, setback=12.0)
    for _ in range(40):
        along, lane = rng.uniform(-60, 60), rng.choice([-1, 1]) * rng.choice([2.0, 5.0, 8.5])
        if abs(along) > 8 or abs(lane) > 3:   # keep the sensor's own lane clear
            meshes.append(box_mesh((along, lane, 0.8), (4.5, 1.9, 1.6), rng.normal(0, 0.05)))
    for x in np.arange(-60.0, 61.0, 12.0):
        for side in (-1, 1):
            meshes.append(pole_mesh(x + rng.uniform(-1, 1), side * 10.5, 0.15, 7.0))
    return meshes


def street_scene(seed: int = 0, beams: int = 64, azimuths: int = 2048, sensor_x=(-6, -3, 0, 3, 6),
                 max_range_m: float = 75.0) -> Sites:
    """A LiDAR-like scan: rays from a sensor 1.8 m up (elevation -25..+3 deg) at several stops along the street."""
    import open3d

    scene = open3d.t.geometry.RaycastingScene()
    for mesh in street_meshes(np.random.default_rng(seed)):
        scene.add_triangles(open3d.t.geometry.TriangleMesh.from_legacy(mesh))
    directions = spinning_lidar_directions(beams, azimuths, elevation_deg=(-25.0, 3.0))
    points = []
    for x in sensor_x:
        origins = np.broadcast_to(np.array([x, 0.0, 1.8]), directions.shape)
        rays = open3d.core.Tensor(np.concatenate([origins, directions], axis=1).astype(np.float32))
        distance = scene.cast_rays(rays)['t_hit'].numpy().astype(np.float64)
        hit = np.isfinite(distance) & (distance < max_range_m)
        points.append(origins[hit] + directions[hit] * distance[hit, None])
    return voxelise(np.concatenate(points), VOXEL_SIZE_M, f'street scan ({len(sensor_x)} sweeps, 0.1 m)')


def analytic_street_scene(beams: int = 64, azimuths: int = 2048, sensor_x=(-6, -3, 0, 3, 6),
                          max_range_m: float = 75.0, setback_m: float = 12.0, wall_height_m: float = 15.0) -> Sites:
    """A stand-in for :func:`street_scene` without open3d: the same rays against a ground plane and two facades.

    Rays hit the ground (z = 0) or a wall at ``|y| = setback_m``; no cars or poles. At the default sizes it has
    131k sites and 6.5 SubM k3 pairs per site (the ray-cast scene: 115k and 6.8).
    """
    directions = spinning_lidar_directions(beams, azimuths, elevation_deg=(-25.0, 3.0))
    sensor_height = 1.8
    with np.errstate(divide='ignore', invalid='ignore'):
        ground = np.where(directions[:, 2] < 0, -sensor_height / directions[:, 2], np.inf)
        wall = np.where(directions[:, 1] != 0, setback_m * np.sign(directions[:, 1]) / directions[:, 1], np.inf)
    wall_z = sensor_height + wall * directions[:, 2]
    distance = np.minimum(ground, np.where((wall_z >= 0) & (wall_z <= wall_height_m), wall, np.inf))
    hit = distance < max_range_m
    points = [np.array([x, 0.0, sensor_height]) + directions[hit] * distance[hit, None] for x in sensor_x]
    return voxelise(np.concatenate(points), VOXEL_SIZE_M,
                    f'analytic street ({len(sensor_x)} sweeps, ground and facades, 0.1 m)')


def street_scene_or_stand_in(**sizes) -> tuple:
    """``(sites, note)``: :func:`street_scene` when open3d imports, else :func:`analytic_street_scene` (same sizes)."""
    try:
        import open3d  # noqa: F401
    except ImportError as error:
        return analytic_street_scene(**sizes), (f'open3d not importable ({error}): the analytic stand-in scene '
                                                '(ground and facades, same rays) replaces the ray-cast street scene')
    return street_scene(**sizes), 'ray-cast street scene (open3d)'
