"""Classify images with a zoo model and draw the predictions.

Image files are read as :class:`~sparsevision.datasets.transforms.LoadImageFromFile` reads them, with two
limits so that memory follows the model's input, not the file: a file of more than :data:`MAX_IMAGE_PIXELS`
pixels is refused (from its header, before it is decoded), and one longer than :data:`LARGE_IMAGE_SIDE` pixels on
a side is area-reduced (``cv2.INTER_AREA`` on its 8-bit pixels, aspect kept) to a longer side of
:data:`LARGE_IMAGE_SIDE` before it becomes float32. Pictures show images reduced to at most
:data:`DISPLAY_SIDE` pixels a side.
"""
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

from ..datasets.transforms import ResizeImage
from ..datasets.transforms.image import fit_within
from ..model_zoo import create_model, load_config
from ..registry import DATASETS
from .model_kinds import IMAGE_CLASSIFIER, check_model_kind

ImageInput = Union[str, Path, np.ndarray]
SAMPLE_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')   # bundled with scikit-image (skimage.data)
MAX_IMAGE_PIXELS = 2**27   # image files with more pixels (134 million: 11585 x 11585) are refused
LARGE_IMAGE_SIDE = 4096   # image files with a longer side are area-reduced to this side as they are read
DISPLAY_SIDE = 512   # pictures draw images reduced to at most this many pixels a side


class ImageClassificationInferencer:
    """Run a zoo classifier on image files or arrays.

    Args:
        model: a zoo name or config file.
        checkpoint: weights file, ``'zoo'`` for the shipped weights, or None (untrained).
        device: where the model runs.

    Raises:
        ValueError: for a model that is not an image classifier, naming those that are.
    """

    def __init__(self, model: str = 'resnet18_w16_digits', checkpoint: Optional[str] = 'zoo',
                 device: str = 'cpu'):
        cfg = load_config(model)
        check_model_kind(cfg, model, [IMAGE_CLASSIFIER], type(self).__name__)
        self.model = create_model(cfg, checkpoint=checkpoint).to(device).eval()
        dataset_cfg = cfg.test_dataloader.dataset
        self.classes = DATASETS.get(dataset_cfg.type).METAINFO['classes']
        self.channels = len(cfg.model.data_preprocessor.mean)
        with DefaultScope.overwrite_default_scope('sparsevision'):
            self.load = Compose([dict(type='LoadImageFromFile', grayscale=self.channels == 1,
                                      max_side=LARGE_IMAGE_SIDE)])
            self.pipeline = Compose(dataset_cfg.pipeline)
        self.input_size = next((transform.size for transform in self.pipeline.transforms
                                if isinstance(transform, ResizeImage)), None)

    def read_file(self, path: Union[str, Path]) -> np.ndarray:
        """An image file as this model's float32 input in [0, 1], read as the module docstring says: refused
        beyond :data:`MAX_IMAGE_PIXELS`, area-reduced beyond :data:`LARGE_IMAGE_SIDE`, else as
        ``LoadImageFromFile`` reads it.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: for a file that is too large or cannot be decoded.
        """
        image_size(path)   # refuses a file with too many pixels before it is decoded
        return self.load(dict(img_path=str(path)))['img']

    def _prepare(self, image: ImageInput) -> dict:
        if isinstance(image, np.ndarray):
            return self.pipeline(dict(img=image.astype(np.float32)))
        return self.pipeline(dict(img_path=str(image), img=self.read_file(image)))

    def prepare(self, images: Sequence[ImageInput]) -> List[dict]:
        """Each image through the test pipeline: ``inputs`` (``[C, H, W]``, pixels in [0, 1]) and ``data_samples``."""
        if not images:
            raise ValueError('no images given')
        return [self._prepare(image) for image in images]

    def collate(self, samples: Sequence[dict]) -> dict:
        """Normalise and stack prepared samples into the model's ``inputs`` / ``data_samples`` batch."""
        return self.model.data_preprocessor(dict(inputs=[sample['inputs'] for sample in samples],
                                                 data_samples=[sample['data_samples'] for sample in samples]))

    def sample_photo(self, name: str) -> np.ndarray:
        """A scikit-image photo (:data:`SAMPLE_PHOTOS`) as this model's input (see :func:`sample_photo`)."""
        return sample_photo(name, self.channels, self.input_size)

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput]) -> List[dict]:
        """Predict each image: ``{'pred_label', 'pred_class', 'pred_score', 'scores'}``."""
        outputs = self.model(**self.collate(self.prepare(images)), mode='predict')
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
            pixels = fit_within(image if isinstance(image, np.ndarray) else self.read_file(image), DISPLAY_SIDE)
            axis.imshow(pixels, cmap='gray' if pixels.ndim == 2 else None, vmin=0, vmax=1)
            title = f'{prediction["pred_class"]} ({prediction["pred_score"]:.2f})'
            axis.set_title(title if titles is None else f'{titles[index]}\n{title}', fontsize=9)
        figure.tight_layout()
        return save_atomically(out_file, lambda path: figure.savefig(path, dpi=100, format='png'),
                               on_done=lambda: plt.close(figure))


def sample_photo(name: str, channels: int = 3, size: Optional[Sequence[int]] = None) -> np.ndarray:
    """A real scikit-image photo (:data:`SAMPLE_PHOTOS`): float32 in [0, 1] with ``channels`` (grey for one),
    fitted to ``size`` (height, width) with :func:`fit_to_size` (``None``: full size)."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f'unknown photo {name!r}; choose one of {", ".join(SAMPLE_PHOTOS)}')
    import skimage.data

    photo = getattr(skimage.data, name)()
    if channels == 1:
        photo = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    if size is not None:
        photo = fit_to_size(photo, size)
    return photo.astype(np.float32) / np.float32(255)


def image_size(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from an image file's header (nothing is decoded), or ``None`` when PIL cannot read it
    (OpenCV then decides whether it is an image).

    Raises:
        ValueError: for an image of more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError:   # PIL's own limit, above ours
            raise ValueError(too_large(path, f'over {2 * Image.MAX_IMAGE_PIXELS:,}')) from None
        except (OSError, SyntaxError, ValueError):   # not an image PIL knows
            return None
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(too_large(path, f'{width} x {height} = {width * height:,}'))
    return width, height


def too_large(path: Union[str, Path], pixels: str) -> str:
    """The message refusing an image file of ``pixels`` pixels."""
    return (f'{path} has {pixels} pixels, more than the {MAX_IMAGE_PIXELS:,} an image file may have here; '
            'reduce it first (e.g. cv2.resize with interpolation=cv2.INTER_AREA)')


def fit_to_size(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre-crop ``image`` to the aspect of ``size`` (height, width), then area-resize it to ``size``."""
    height, width = size
    crop_height = min(image.shape[0], round(image.shape[1] * height / width))
    crop_width = min(image.shape[1], round(image.shape[0] * width / height))
    top, left = (image.shape[0] - crop_height) // 2, (image.shape[1] - crop_width) // 2
    return cv2.resize(image[top:top + crop_height, left:left + crop_width], (width, height),
                      interpolation=cv2.INTER_AREA)


def write_json_atomically(out_file: Union[str, Path], payload) -> Path:
    """Write ``payload`` as JSON to ``out_file`` without ever leaving a partial file."""
    return save_atomically(out_file, lambda path: Path(path).write_text(json.dumps(payload, indent=2)))


def save_atomically(out_file: Union[str, Path], write, on_done=None) -> Path:
    """Call ``write(temporary_path)`` beside ``out_file``, then move the result into place (never a partial file)."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out_file.parent, suffix=out_file.suffix + '.partial')
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())   # mkstemp makes the file private; give it normal permissions
        os.replace(temporary, out_file)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
        if on_done is not None:
            on_done()
    return out_file


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
