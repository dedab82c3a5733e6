"""Pack a sample into the ``inputs`` / ``data_samples`` pair that models take."""
import numpy as np
import torch
from mmengine.structures import BaseDataElement

from ...registry import TRANSFORMS


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
