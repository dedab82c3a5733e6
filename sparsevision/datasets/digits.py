"""sklearn's handwritten digits as an mmengine dataset."""
from typing import Optional

import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """The 1,797 real 8x8 handwritten digits of ``sklearn.datasets.load_digits``.

    Images are float32 ``[8, 8]`` in ``[0, 1]`` (ink is bright); the pipeline
    resizes them. The split is stratified and fixed by ``split_seed``, so train
    and val never share an image and every run sees the same split.

    Args:
        split: ``'train'`` or ``'val'``.
        val_fraction: share of each class held out for validation.
        split_seed: seed of the split.
        labels_per_class: keep only this many images of each class (a fixed,
            seeded subset of the split), for few-label fine-tuning; ``None`` keeps all.
        pipeline: transforms applied to each sample.
        **kwargs: other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO = dict(classes=tuple(str(digit) for digit in range(10)))

    def __init__(self, split: str = 'train', val_fraction: float = 0.2, split_seed: int = 0,
                 labels_per_class: Optional[int] = None, pipeline=(), **kwargs):
        if split not in ('train', 'val'):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f'val_fraction must lie in (0, 1), got {val_fraction}')
        if labels_per_class is not None and labels_per_class < 1:
            raise ValueError(f'labels_per_class must be a positive count or None, got {labels_per_class}')
        self.split, self.val_fraction, self.split_seed = split, val_fraction, split_seed
        self.labels_per_class = labels_per_class
        super().__init__(pipeline=list(pipeline), serialize_data=False, **kwargs)

    def load_data_list(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)
        labels = digits.target.astype(np.int64)
        rng = np.random.default_rng(self.split_seed)
        val_indices = []
        for label in range(10):
            members = rng.permutation(np.flatnonzero(labels == label))
            val_indices.extend(members[:round(len(members) * self.val_fraction)].tolist())
        in_val = np.zeros(len(labels), dtype=bool)
        in_val[val_indices] = True
        chosen = np.flatnonzero(in_val if self.split == 'val' else ~in_val)
        if self.labels_per_class is not None:
            chosen = np.sort(np.concatenate([rng.permutation(chosen[labels[chosen] == label])[:self.labels_per_class]
                                             for label in range(10)]))
        return [dict(img=images[i], gt_label=int(labels[i]), sample_index=int(i)) for i in chosen]
