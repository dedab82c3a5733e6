"""Shape classification: point clouds sampled from open3d primitive meshes (and optional mesh files), voxelised."""
from pathlib import Path
from typing import Sequence

import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS
from ..utils.optional import import_optional
from .mesh_sampling import sample_surface

PRIMITIVES = ('box', 'sphere', 'cylinder', 'cone', 'torus', 'tetrahedron', 'octahedron', 'arrow')


def primitive_mesh(name: str):
    """An open3d triangle mesh of a primitive, roughly unit-sized and centred."""
    open3d = import_optional('open3d', 'open3d', 'primitive meshes (the shapes dataset)')

    create = open3d.geometry.TriangleMesh
    meshes = {
        'box': lambda: create.create_box(1.0, 1.0, 1.0),
        'sphere': lambda: create.create_sphere(0.5, resolution=20),
        'cylinder': lambda: create.create_cylinder(0.4, 1.2, resolution=24),
        'cone': lambda: create.create_cone(0.5, 1.2, resolution=24),
        'torus': lambda: create.create_torus(0.5, 0.18, radial_resolution=24, tubular_resolution=12),
        'tetrahedron': lambda: create.create_tetrahedron(0.7),
        'octahedron': lambda: create.create_octahedron(0.6),
        'arrow': lambda: create.create_arrow(0.12, 0.24, 0.9, 0.35, resolution=16),
    }
    if name not in meshes:
        raise ValueError(f'unknown primitive {name!r}; choose from {", ".join(PRIMITIVES)}')
    mesh = meshes[name]()
    return mesh.translate(-mesh.get_center())


def load_mesh(path: Path):
    """A user mesh file (anything open3d reads: .obj, .ply, .stl, .off, ...)."""
    open3d = import_optional('open3d', 'open3d', 'reading mesh files')

    if not path.is_file():
        raise FileNotFoundError(f'mesh file {path} does not exist')
    mesh = open3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise ValueError(f'{path} holds no triangles (is it a mesh file open3d can read?)')
    return mesh


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def voxelise_points(points: np.ndarray, grid: int):
    """Occupied cells of a ``grid``³ lattice over ``[-1, 1]³``: ``(coordinates [N, 3] int32 (z, y, x),
    features [N, 4] float32 (1, mean x, y, z of the cell's points))``."""
    cells = np.clip(np.floor((points + 1.0) / 2.0 * grid), 0, grid - 1).astype(np.int64)
    keys = (cells[:, 2] * grid + cells[:, 1]) * grid + cells[:, 0]
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    means = np.zeros((len(unique), 3))
    np.add.at(means, inverse, points)
    means /= counts[:, None]
    coordinates = np.stack([unique // (grid * grid), unique // grid % grid, unique % grid], axis=1).astype(np.int32)
    features = np.concatenate([np.ones((len(unique), 1)), means], axis=1).astype(np.float32)
    return coordinates, features


@DATASETS.register_module()
class ShapeClassificationDataset(BaseDataset):
    """Randomly scaled, rotated and jittered surface samples of shapes, voxelised, one class per shape.

    Each sample draws an anisotropic scale (0.6-1.4 per axis), a uniform
    rotation, ``points`` area-weighted surface points and Gaussian jitter, then
    fits the cloud into the unit sphere and voxelises it on a ``grid``³ lattice.
    Every sample is deterministic in (split, index, seed); train and val use
    different draws.

    Args:
        split: ``'train'`` or ``'val'``.
        samples_per_class: samples of each class in this split.
        shapes: open3d primitives (:data:`PRIMITIVES`) used as classes.
        mesh_files: extra classes, one per mesh file.
        points: surface points per sample.
        grid: voxels per axis.
        jitter: standard deviation of the point noise, in units of the shape's radius.
        seed: base seed.
        pipeline: transforms (typically :class:`~sparsevision.datasets.transforms.PackPointCloudInputs`).
    """

    def __init__(self, split: str = 'train', samples_per_class: int = 80, shapes: Sequence[str] = PRIMITIVES,
                 mesh_files: Sequence[str] = (), points: int = 2048, grid: int = 24, jitter: float = 0.01,
                 seed: int = 0, pipeline=(), **kwargs):
        if split not in ('train', 'val'):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if samples_per_class < 1 or points < 1 or grid < 2:
            raise ValueError('samples_per_class and points must be positive and grid at least 2, got '
                             f'{samples_per_class}, {points}, {grid}')
        self.meshes = [primitive_mesh(name) for name in shapes] + [load_mesh(Path(f)) for f in mesh_files]
        if not self.meshes:
            raise ValueError('no shapes: give primitive names and/or mesh files')
        self.split, self.samples_per_class, self.points, self.grid = split, samples_per_class, points, grid
        self.jitter, self.seed = jitter, seed
        classes = tuple(shapes) + tuple(Path(f).stem for f in mesh_files)
        super().__init__(pipeline=list(pipeline), serialize_data=False, metainfo=dict(classes=classes), **kwargs)

    def load_data_list(self):
        samples = []
        for label, mesh in enumerate(self.meshes):
            vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
            for index in range(self.samples_per_class):
                rng = np.random.default_rng([self.seed, self.split == 'val', label, index])
                shaped = vertices * rng.uniform(0.6, 1.4, size=3) @ random_rotation(rng).T
                cloud = sample_surface(shaped, triangles, self.points, seed=int(rng.integers(2**31)))
                cloud -= cloud.mean(axis=0)
                cloud /= np.linalg.norm(cloud, axis=1).max() * 1.05
                cloud += rng.normal(scale=self.jitter, size=cloud.shape)
                coordinates, features = voxelise_points(cloud, self.grid)
                samples.append(dict(coordinates=coordinates, features=features, spatial_shape=[self.grid] * 3,
                                    gt_label=label, sample_index=len(samples)))
        return samples


@DATASETS.register_module()
class ShapeSceneSegmentationDataset(BaseDataset):
    """Scenes of several shapes on a ground plane; every voxel labelled with the shape it samples (or ground).

    Each scene places ``shapes_per_scene`` randomly chosen, scaled and rotated
    shapes (see :class:`ShapeClassificationDataset`) at random spots on a
    ground square, samples their surfaces and the ground, and voxelises the
    scene on a ``grid``³ lattice. Label 0 is ground, label ``1 + i`` is shape
    ``i``; a voxel takes the label most of its points carry. Deterministic in
    (split, index, seed).

    Args:
        split: ``'train'`` or ``'val'``.
        scenes: number of scenes in this split.
        shapes: primitives that may appear (:data:`PRIMITIVES`).
        shapes_per_scene: shapes placed in each scene.
        points: surface points per shape (the ground gets as many).
        grid: voxels per axis.
        seed: base seed.
        pipeline: transforms (typically ``PackPointCloudInputs``).
    """

    def __init__(self, split: str = 'train', scenes: int = 200, shapes: Sequence[str] = PRIMITIVES,
                 shapes_per_scene: int = 3, points: int = 3000, grid: int = 32, seed: int = 0, pipeline=(),
                 **kwargs):
        if split not in ('train', 'val'):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if scenes < 1 or shapes_per_scene < 1 or points < 1 or grid < 2:
            raise ValueError('scenes, shapes_per_scene and points must be positive and grid at least 2')
        self.meshes = [primitive_mesh(name) for name in shapes]
        self.split, self.scenes, self.shapes_per_scene = split, scenes, shapes_per_scene
        self.points, self.grid, self.seed = points, grid, seed
        super().__init__(pipeline=list(pipeline), serialize_data=False,
                         metainfo=dict(classes=('ground',) + tuple(shapes)), **kwargs)

    def load_data_list(self):
        samples = []
        for index in range(self.scenes):
            rng = np.random.default_rng([self.seed, self.split == 'val', index])
            clouds, labels = [], []
            spots = rng.permutation(9)[:self.shapes_per_scene]   # cells of a 3x3 layout, one shape each
            for spot in spots:
                label = int(rng.integers(len(self.meshes)))
                mesh = self.meshes[label]
                vertices = np.asarray(mesh.vertices) * rng.uniform(0.35, 0.5, size=3) @ random_rotation(rng).T
                cloud = sample_surface(vertices, np.asarray(mesh.triangles), self.points,
                                       seed=int(rng.integers(2**31)))
                centre = np.array([spot % 3 - 1, spot // 3 - 1, 0.0]) * 0.62 + rng.uniform(-0.05, 0.05, 3)
                cloud = cloud - cloud.mean(axis=0) + centre
                cloud[:, 2] += -0.8 - cloud[:, 2].min()   # resting on the ground
                clouds.append(cloud)
                labels.append(np.full(len(cloud), label + 1))
            ground = np.column_stack([rng.uniform(-0.98, 0.98, (self.points, 2)), np.full(self.points, -0.82)])
            clouds.append(ground)
            labels.append(np.zeros(self.points, dtype=np.int64))
            points, point_labels = np.clip(np.concatenate(clouds), -0.999, 0.999), np.concatenate(labels)
            coordinates, features = voxelise_points(points, self.grid)
            samples.append(dict(coordinates=coordinates, features=features, spatial_shape=[self.grid] * 3,
                                gt_seg=voxel_labels(points, point_labels, self.grid, coordinates),
                                sample_index=index))
        return samples


def voxel_labels(points: np.ndarray, labels: np.ndarray, grid: int, coordinates: np.ndarray) -> np.ndarray:
    """The most frequent point label of each occupied voxel, in the order of ``coordinates``."""
    cells = np.clip(np.floor((points + 1.0) / 2.0 * grid), 0, grid - 1).astype(np.int64)
    keys = (cells[:, 2] * grid + cells[:, 1]) * grid + cells[:, 0]
    voxel_keys = (coordinates[:, 0].astype(np.int64) * grid + coordinates[:, 1]) * grid + coordinates[:, 2]
    votes = np.zeros((len(voxel_keys), labels.max() + 1), dtype=np.int64)
    np.add.at(votes, (np.searchsorted(voxel_keys, keys), labels), 1)
    return votes.argmax(axis=1)
