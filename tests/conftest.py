"""Shared test fixtures: repository root, subprocess runner, voxelised real meshes."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsevision.datasets.mesh_sampling import sample_surface

REPO_ROOT = Path(__file__).resolve().parent.parent
MESHES = REPO_ROOT.parent / 'shared' / 'data' / 'meshes'  # real meshes beside the checkout (tests only)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


def run_python(args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or a module via ``['-m', ...]``) in a fresh process; output captured."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def python_process():
    """The :func:`run_python` helper, as a fixture."""
    return run_python


@functools.cache
def voxelised_mesh(name: str, resolution: int, points: int = 200_000):
    """Sites ``[N, 4]`` int32 (batch 0, z, y, x) and spatial shape of a real mesh's surface.

    Area-weighted random surface samples (seed 0), scaled so the longest side
    spans ``resolution`` voxels.
    """
    import open3d

    mesh = open3d.io.read_triangle_mesh(str(MESHES / name))
    samples = sample_surface(np.asarray(mesh.vertices), np.asarray(mesh.triangles), points)
    samples -= samples.min(axis=0)
    voxels = np.unique(np.floor(samples / (samples.max() / resolution)).astype(np.int32), axis=0)
    sites = np.concatenate([np.zeros((len(voxels), 1), np.int32), voxels[:, ::-1]], axis=1)
    return torch.from_numpy(np.ascontiguousarray(sites)), (voxels.max(axis=0)[::-1] + 1).tolist()


@pytest.fixture(scope='session')
def mesh_sites():
    """:func:`voxelised_mesh`; skips when the shared meshes are not beside the checkout."""
    if not MESHES.is_dir():
        pytest.skip(f'real meshes not found at {MESHES}')
    pytest.importorskip('open3d')
    return voxelised_mesh
