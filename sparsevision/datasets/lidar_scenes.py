"""Labelled LiDAR sweeps of simulated streets (per-point classes and vehicle boxes), generated on demand."""
from typing import Dict, Sequence

import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS
from .street_scenes import STREET_CLASSES, VEHICLE_CLASSES, LidarSweep, simulate_street_sweep

SPLITS = ('train', 'val', 'test')


@DATASETS.register_module()
class SimulatedLidarSceneDataset(BaseDataset):
    """One spinning-LiDAR sweep per sample, ray-cast with open3d in a random street.

    Each scene (see :func:`~sparsevision.datasets.street_scenes.simulate_street_sweep`)
    holds ground (road and sidewalks), cars, poles and buildings; the sensor
    sits at the origin, ``sensor_height`` above the road. A sample is

    * ``points``: float32 ``[P, 4]`` x, y, z, intensity in [0, 1] (LiDAR frame);
    * ``pts_semantic_mask``: int64 ``[P]`` index into ``classes``
      (``'ground', 'vehicle', 'pole', 'building'``);
    * ``gt_bboxes_3d``: float32 ``[M, 7]`` gravity-centre boxes (x, y, z, dx, dy, dz, yaw)
      of the cars hit by at least ``min_points_per_box`` points, and ``gt_labels_3d``
      int64 ``[M]`` zeros (``box_classes`` is ``('vehicle',)``);
    * ``sample_index``.

    Scenes are deterministic in (seed, split, index), with different draws
    for each split. Construction is instant: a scene is simulated the first
    time it is asked for (15-30 ms for 32 x 1024 rays on two CPU cores, about 32k points)
    and kept in memory (about 0.5 MB per scene) when ``cache`` is on. Each
    dataloader worker keeps its own cache, so use ``persistent_workers=True``
    (or no workers) for later epochs to reuse it.

    Args:
        split: ``'train'``, ``'val'`` or ``'test'``.
        scenes: number of scenes in this split.
        seed: base seed.
        beams: lasers, evenly spaced over ``elevation_deg``.
        azimuths: rays per laser and turn.
        elevation_deg: lowest and highest beam elevation, degrees.
        max_range: farthest return kept, metres.
        range_noise: standard deviation of the range noise, metres.
        sensor_height: sensor height above the road, metres.
        min_points_per_box: cars hit by fewer points get no box.
        cache: keep generated scenes in memory.
        pipeline: transforms (e.g. ``PointsRangeFilter``, random augmentations, ``Voxelize``,
            ``PackPointCloudInputs``).
    """

    def __init__(self, split: str = 'train', scenes: int = 200, seed: int = 0, beams: int = 32,
                 azimuths: int = 1024, elevation_deg: Sequence[float] = (-25.0, 3.0), max_range: float = 50.0,
                 range_noise: float = 0.02, sensor_height: float = 1.8, min_points_per_box: int = 5,
                 cache: bool = True, pipeline=(), **kwargs):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if scenes < 1 or beams < 1 or azimuths < 1 or max_range <= 0 or range_noise < 0:
            raise ValueError('scenes, beams and azimuths must be >= 1, max_range > 0 and range_noise >= 0, got '
                             f'{scenes}, {beams}, {azimuths}, {max_range}, {range_noise}')
        self.split, self.scenes, self.seed, self.cache = split, scenes, seed, cache
        self.sweep_options = dict(beams=beams, azimuths=azimuths, elevation_deg=tuple(elevation_deg),
                                  max_range=max_range, range_noise=range_noise, sensor_height=sensor_height,
                                  min_points_per_box=min_points_per_box)
        self._sweeps: Dict[int, LidarSweep] = {}
        super().__init__(pipeline=list(pipeline), serialize_data=False,
                         metainfo=dict(classes=STREET_CLASSES, box_classes=VEHICLE_CLASSES), **kwargs)

    def load_data_list(self):
        return [dict(sample_index=index) for index in range(self.scenes)]

    def sweep(self, index: int) -> LidarSweep:
        """The simulated sweep of scene ``index`` of this split (cached, with uint8 labels, when ``cache`` is on)."""
        if index in self._sweeps:
            return self._sweeps[index]
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        sweep = simulate_street_sweep(rng, **self.sweep_options)
        if self.cache:   # labels fit a byte: a third less memory per cached scene
            self._sweeps[index] = sweep._replace(labels=sweep.labels.astype(np.uint8))
        return sweep

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        sweep = self.sweep(info['sample_index'])
        info.update(points=sweep.points.copy(), pts_semantic_mask=sweep.labels.astype(np.int64),
                    gt_bboxes_3d=sweep.boxes.copy(), gt_labels_3d=np.zeros(len(sweep.boxes), dtype=np.int64))
        return info
