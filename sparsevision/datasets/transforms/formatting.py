"""Pack a sample into the ``inputs`` / ``data_samples`` pair that models take."""
import numpy as np
import torch
from mmengine.structures import BaseDataElement

from ...registry import TRANSFORMS
from ...structures import box_tensor


@TRANSFORMS.register_module()
class PackClassificationInputs:
    """``img`` -> ``inputs`` (``[C, H, W]`` float tensor); label and meta -> ``data_samples``.

    Args:
        meta_keys: keys copied into the data sample's metainfo when present.
    """

    def __init__(self, meta_keys=('sample_index', 'img_path')):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        image = np.ascontiguousarray(results['img'], dtype=np.float32)
        if image.ndim == 2:
            image = image[None]
        else:
            image = image.transpose(2, 0, 1)
        sample = BaseDataElement(metainfo={key: results[key] for key in self.meta_keys if key in results})
        if 'gt_label' in results:
            sample.gt_label = torch.as_tensor(results['gt_label'], dtype=torch.long)
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(image)), data_samples=sample)


@TRANSFORMS.register_module()
class PackPointCloudInputs:
    """``coordinates`` ``[N, D]`` int32 and ``features`` ``[N, C]`` float32 -> ``inputs`` (a dict of tensors with
    ``spatial_shape``), labels and meta -> ``data_samples``; collated into a SparseTensor by
    :class:`~sparsevision.models.data_preprocessors.SparseDataPreprocessor`.

    The data sample carries, when the results hold them: ``gt_label``; ``gt_seg`` (long ``[N]``, per site);
    ``gt_bboxes_3d`` (float32 ``[M, 7]``), ``gt_labels_3d`` (long ``[M]``); ``point_to_voxel`` (long ``[P]``)
    and ``gt_point_seg`` (long ``[P]``, from ``pts_semantic_mask``).

    Args:
        meta_keys: keys copied into the data sample's metainfo when present.
    """

    def __init__(self, meta_keys=('sample_index', 'lidar_path', 'voxel_size', 'point_cloud_range')):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        coordinates = torch.as_tensor(np.asarray(results['coordinates']), dtype=torch.int32)
        features = torch.as_tensor(np.asarray(results['features']), dtype=torch.float32)
        if coordinates.dim() != 2 or features.dim() != 2 or coordinates.shape[0] != features.shape[0]:
            raise ValueError(f'a point-cloud sample needs coordinates [N, D] and features [N, C] with the same N, got '
                             f'{tuple(coordinates.shape)} and {tuple(features.shape)}')
        sample = BaseDataElement(metainfo={key: results[key] for key in self.meta_keys if key in results})
        if 'gt_label' in results:
            sample.gt_label = torch.as_tensor(results['gt_label'], dtype=torch.long)
        if 'gt_seg' in results:   # one label per site, in the order of the coordinates
            sample.gt_seg = torch.as_tensor(np.asarray(results['gt_seg']), dtype=torch.long)
        if 'gt_bboxes_3d' in results:
            sample.gt_bboxes_3d = box_tensor(results['gt_bboxes_3d'])
        if 'gt_labels_3d' in results:
            sample.gt_labels_3d = torch.as_tensor(np.asarray(results['gt_labels_3d']), dtype=torch.long)
        if 'point_to_voxel' in results:
            sample.point_to_voxel = torch.as_tensor(np.asarray(results['point_to_voxel']), dtype=torch.long)
        if 'pts_semantic_mask' in results:
            sample.gt_point_seg = torch.as_tensor(np.asarray(results['pts_semantic_mask']), dtype=torch.long)
        return dict(inputs=dict(coordinates=coordinates, features=features,
                                spatial_shape=list(results['spatial_shape'])), data_samples=sample)
