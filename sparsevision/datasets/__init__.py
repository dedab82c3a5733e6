"""Datasets (registered in DATASETS) and their transforms (TRANSFORMS)."""
from . import transforms  # noqa: F401  (registration)
from .digits import DigitsDataset
from .event_digits import EventDigitsDataset
from .photo_crops import PhotoCropsDataset
from .shapes import ShapeClassificationDataset, ShapeSceneSegmentationDataset
from .lidar_scenes import SimulatedLidarSceneDataset
from .point_cloud_folder import PointCloudFolderDataset
from .point_cloud_io import read_points

__all__ = ['DigitsDataset', 'EventDigitsDataset', 'PhotoCropsDataset', 'ShapeClassificationDataset',
           'ShapeSceneSegmentationDataset']
__all__ += ['PointCloudFolderDataset', 'SimulatedLidarSceneDataset', 'read_points']
