"""Image transforms on ``results['img']`` (float32 ``[H, W]`` or ``[H, W, C]`` in [0, 1])."""
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ...registry import TRANSFORMS


def fit_within(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` area-reduced (``cv2.INTER_AREA``, aspect kept) so its longer side is ``side``; as it is when
    it already fits."""
    height, width = image.shape[:2]
    if max(height, width) <= side:
        return image
    scale = side / max(height, width)
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``results['img_path']`` into a float32 image in [0, 1].

    Args:
        grayscale: read one channel (``[H, W]``) instead of RGB (``[H, W, 3]``).
        max_side: area-reduce (``cv2.INTER_AREA``, aspect kept) an image with a longer side than this while its
            pixels are still 8 or 16 bit, so memory follows this side rather than the file; None reads it whole.
    """

    def __init__(self, grayscale: bool = False, max_side: Optional[int] = None):
        self.grayscale = grayscale
        self.max_side = max_side

    def __call__(self, results: dict) -> dict:
        path = Path(results['img_path'])
        if not path.is_file():
            raise FileNotFoundError(f'image {path} does not exist')
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if self.grayscale else cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'could not decode {path} as an image (is it a PNG/JPEG/BMP file?)')
        if self.max_side is not None:
            image = fit_within(image, self.max_side)
        if not self.grayscale:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        results['img'] = image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
        return results


@TRANSFORMS.register_module()
class ResizeImage:
    """Resize to ``size`` (an int for a square, or ``(height, width)``) with bilinear interpolation."""

    def __init__(self, size: Union[int, Tuple[int, int]]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, results: dict) -> dict:
        height, width = self.size
        results['img'] = cv2.resize(results['img'], (width, height), interpolation=cv2.INTER_LINEAR)
        return results


@TRANSFORMS.register_module()
class RandomAffine:
    """Random rotation, scale and translation (uses numpy's global RNG, reseeded per epoch in training).

    Args:
        max_rotation: largest rotation in degrees (either way).
        scale_range: ``(low, high)`` zoom factors.
        max_translation: largest shift as a fraction of the image size.
    """

    def __init__(self, max_rotation: float = 10.0, scale_range: Sequence[float] = (0.9, 1.1),
                 max_translation: float = 0.1):
        self.max_rotation = max_rotation
        self.scale_range = tuple(scale_range)
        self.max_translation = max_translation

    def __call__(self, results: dict) -> dict:
        image = results['img']
        height, width = image.shape[:2]
        angle = np.random.uniform(-self.max_rotation, self.max_rotation)
        scale = np.random.uniform(*self.scale_range)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        matrix[:, 2] += np.random.uniform(-self.max_translation, self.max_translation, 2) * (width, height)
        results['img'] = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return results


@TRANSFORMS.register_module()
class RandomResizedCrop:
    """A random crop of random area and aspect ratio, resized to ``size`` (Inception-style; numpy's global RNG).

    Args:
        size: output size (an int for a square, or ``(height, width)``).
        scale: ``(low, high)`` share of the image area the crop covers.
        ratio: ``(low, high)`` crop aspect ratios (width / height), drawn log-uniformly.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f'scale must be (low, high) with 0 < low <= high <= 1, got {scale}')
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.log_ratio = tuple(scale), (np.log(ratio[0]), np.log(ratio[1]))

    def __call__(self, results: dict) -> dict:
        image = results['img']
        height, width = image.shape[:2]
        area = np.random.uniform(*self.scale) * height * width
        aspect = np.exp(np.random.uniform(*self.log_ratio))
        crop_width = int(np.clip(round(np.sqrt(area * aspect)), 1, width))
        crop_height = int(np.clip(round(np.sqrt(area / aspect)), 1, height))
        top = np.random.randint(0, height - crop_height + 1)
        left = np.random.randint(0, width - crop_width + 1)
        crop = image[top:top + crop_height, left:left + crop_width]
        results['img'] = cv2.resize(crop, self.size[::-1], interpolation=cv2.INTER_AREA)
        return results


@TRANSFORMS.register_module()
class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``prob`` (numpy's global RNG)."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            results['img'] = np.ascontiguousarray(results['img'][:, ::-1])
        return results
