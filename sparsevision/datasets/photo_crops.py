"""Random crops of scikit-image's real photos, for self-supervised pretraining without a download."""
from typing import Sequence

import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


@DATASETS.register_module()
class PhotoCropsDataset(BaseDataset):
    """``samples_per_epoch`` entries cycling over real photos; the pipeline draws the crop (no labels).

    Args:
        photos: names of ``skimage.data`` photos (RGB; astronaut, coffee, chelsea, rocket).
        samples_per_epoch: dataset length.
        pipeline: transforms, typically a random resized crop, a flip and packing.
        **kwargs: other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    def __init__(self, photos: Sequence[str] = ('astronaut', 'coffee', 'rocket'), samples_per_epoch: int = 640,
                 pipeline=(), **kwargs):
        unknown = sorted(set(photos) - set(PHOTOS))
        if unknown or not photos:
            raise ValueError(f'unknown photos {unknown or list(photos)}; choose from {", ".join(PHOTOS)}')
        if samples_per_epoch < 1:
            raise ValueError(f'samples_per_epoch must be positive, got {samples_per_epoch}')
        self.photos, self.samples_per_epoch = tuple(photos), samples_per_epoch
        super().__init__(pipeline=list(pipeline), serialize_data=False, **kwargs)

    def load_data_list(self):
        import skimage.data

        images = [getattr(skimage.data, name)().astype(np.float32) / np.float32(255) for name in self.photos]
        return [dict(img=images[i % len(images)], photo=self.photos[i % len(images)], sample_index=i)
                for i in range(self.samples_per_epoch)]
