"""Classify images with a zoo model and draw the predictions."""
import json
import os
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

from ..model_zoo import create_model, load_config
from ..registry import DATASETS

ImageInput = Union[str, Path, np.ndarray]


class ImageClassificationInferencer:
    """Run a zoo classifier on image files or arrays.

    Args:
        model: a zoo name or config file.
        checkpoint: weights file, ``'zoo'`` for the shipped weights, or None (untrained).
        device: where the model runs.
    """

    def __init__(self, model: str = 'resnet18_w16_digits', checkpoint: Optional[str] = 'zoo',
                 device: str = 'cpu'):
        cfg = load_config(model)
        self.model = create_model(cfg, checkpoint=checkpoint).to(device).eval()
        dataset_cfg = cfg.test_dataloader.dataset
        self.classes = DATASETS.get(dataset_cfg.type).METAINFO['classes']
        channels = len(cfg.model.data_preprocessor.mean)
        with DefaultScope.overwrite_default_scope('sparsevision'):
            self.load = Compose([dict(type='LoadImageFromFile', grayscale=channels == 1)])
            self.pipeline = Compose(dataset_cfg.pipeline)

    def _prepare(self, image: ImageInput) -> dict:
        if isinstance(image, np.ndarray):
            return self.pipeline(dict(img=image.astype(np.float32)))
        return self.pipeline(self.load(dict(img_path=str(image))))

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput]) -> List[dict]:
        """Predict each image: ``{'pred_label', 'pred_class', 'pred_score', 'scores'}``."""
        if not images:
            raise ValueError('no images given')
        batch = [self._prepare(image) for image in images]
        data = self.model.data_preprocessor(
            dict(inputs=[sample['inputs'] for sample in batch], data_samples=[s['data_samples'] for s in batch]))
        outputs = self.model(**data, mode='predict')
        return [dict(pred_label=int(out.pred_label), pred_class=self.classes[int(out.pred_label)],
                     pred_score=float(out.pred_score.max()), scores=out.pred_score.cpu().tolist())
                for out in outputs]

    def visualize(self, images: Sequence[ImageInput], predictions: Sequence[dict], out_file: Union[str, Path],
                  titles: Optional[Sequence[str]] = None) -> Path:
        """Draw the images in a grid with their predicted class and score; written atomically as PNG."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        columns = min(len(images), 6)
        rows = (len(images) + columns - 1) // columns
        figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.6 * rows), squeeze=False)
        for axis in axes.flat:
            axis.axis('off')
        for index, (image, prediction) in enumerate(zip(images, predictions)):
            axis = axes.flat[index]
            pixels = image if isinstance(image, np.ndarray) else self.load(dict(img_path=str(image)))['img']
            axis.imshow(pixels, cmap='gray' if pixels.ndim == 2 else None, vmin=0, vmax=1)
            title = f'{prediction["pred_class"]} ({prediction["pred_score"]:.2f})'
            axis.set_title(title if titles is None else f'{titles[index]}\n{title}', fontsize=9)
        figure.tight_layout()
        return _save_atomically(out_file, lambda path: figure.savefig(path, dpi=100, format='png'),
                                on_done=lambda: plt.close(figure))


def write_json_atomically(out_file: Union[str, Path], payload) -> Path:
    """Write ``payload`` as JSON to ``out_file`` without ever leaving a partial file."""
    return _save_atomically(out_file, lambda path: Path(path).write_text(json.dumps(payload, indent=2)))


def _save_atomically(out_file, write, on_done=None) -> Path:
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out_file.parent, suffix=out_file.suffix + '.partial')
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, out_file)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
        if on_done is not None:
            on_done()
    return out_file
