"""A folder of point cloud files, for inference on your own scans."""
from pathlib import Path
from typing import Optional, Sequence

from mmengine.dataset import BaseDataset

from ..registry import DATASETS
from .point_cloud_io import SUPPORTED_EXTENSIONS, read_points


@DATASETS.register_module()
class PointCloudFolderDataset(BaseDataset):
    """Every point cloud file directly inside ``data_root``, in sorted file-name order; no labels.

    Files are read when a sample is asked for, with :func:`~sparsevision.datasets.point_cloud_io.read_points`
    and the reader options given here. A sample is ``points`` (float32 ``[P, 3 + C]``), ``lidar_path`` and
    ``sample_index``.

    Args:
        data_root: the folder.
        extensions: file extensions to read (case-insensitive), among ``.bin``, ``.npy``, ``.pcd``, ``.ply``,
            ``.xyz``.
        num_columns: float32 values per point in ``.bin`` files (KITTI 4, nuScenes 5).
        xyz_columns: the columns holding x, y, z.
        feature_columns: the feature columns to keep; ``None`` keeps all that are not x, y, z.
        pipeline: transforms (e.g. ``PointsRangeFilter``, ``Voxelize``, ``PackPointCloudInputs``).

    Raises:
        FileNotFoundError: if ``data_root`` is not a folder.
        ValueError: on an unsupported extension or a folder with no file to read.
    """

    def __init__(self, data_root: str, extensions: Sequence[str] = SUPPORTED_EXTENSIONS, num_columns: int = 4,
                 xyz_columns: Sequence[int] = (0, 1, 2), feature_columns: Optional[Sequence[int]] = None,
                 pipeline=(), **kwargs):
        self.extensions = tuple(extension.lower() for extension in extensions)
        unsupported = [extension for extension in self.extensions if extension not in SUPPORTED_EXTENSIONS]
        if unsupported:
            raise ValueError(f'extensions {unsupported} are not supported; choose from '
                             f'{", ".join(SUPPORTED_EXTENSIONS)} (with the leading dot)')
        self.reader_options = dict(num_columns=num_columns, xyz_columns=tuple(xyz_columns),
                                   feature_columns=None if feature_columns is None else tuple(feature_columns))
        super().__init__(data_root=str(data_root), pipeline=list(pipeline), serialize_data=False, **kwargs)

    def load_data_list(self):
        folder = Path(self.data_root)
        if not folder.is_dir():
            raise FileNotFoundError(f'point cloud folder {folder} does not exist (or is not a folder)')
        files = sorted(path for path in folder.iterdir()
                       if path.is_file() and path.suffix.lower() in self.extensions)
        if not files:
            raise ValueError(f'{folder} holds no point cloud file with extension {", ".join(self.extensions)}')
        return [dict(lidar_path=str(path), sample_index=index) for index, path in enumerate(files)]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        info['points'] = read_points(info['lidar_path'], **self.reader_options)
        return info
