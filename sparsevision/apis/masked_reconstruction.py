"""Show what a masked autoencoder (SparK, FCMAE) sees and what it reconstructs."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..model_zoo import create_model, load_config
from .image_classification import save_atomically
from .model_kinds import MASKED_AUTOENCODER, check_model_kind


class MaskedReconstructionInferencer:
    """Hide random patches of an image and let a zoo masked autoencoder fill them in.

    Args:
        model: a zoo name or config file of a :class:`~sparsevision.models.masked_pretraining.MaskedAutoencoder`.
        checkpoint: weights file, ``'zoo'`` for the shipped weights, or None (untrained).
        device: where the model runs.

    Raises:
        ValueError: for a model that is not a masked autoencoder, naming those that are.
    """

    def __init__(self, model: str = 'spark_resnet18_w16_photos', checkpoint: Optional[str] = 'zoo',
                 device: str = 'cpu'):
        cfg = load_config(model)
        check_model_kind(cfg, model, [MASKED_AUTOENCODER], type(self).__name__)
        self.model = create_model(cfg, checkpoint=checkpoint).to(device).eval()
        preprocessor = cfg.model.data_preprocessor
        self.mean = torch.tensor(preprocessor.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(preprocessor.std, dtype=torch.float32).view(-1, 1, 1)
        self.channels, self.input_size = self.model.in_channels, self.model.input_size
        self.device = device

    def __call__(self, image: np.ndarray, mask_ratio: Optional[float] = None, seed: int = 0) -> Dict[str, np.ndarray]:
        """``{'input', 'masked', 'reconstruction'}`` images (``[H, W(, C)]`` in [0, 1]) and ``'visible'`` (patch grid).

        Args:
            image: ``[H, W]`` or ``[H, W, C]`` float in [0, 1] at the model's input size.
            mask_ratio: share of patches hidden (default: the model's).
            seed: seed of the random mask.
        """
        expected = (*self.input_size, self.channels) if self.channels > 1 else tuple(self.input_size)
        if image.shape != expected:
            raise ValueError(f'the model takes {expected} images, got {image.shape}')
        pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        pixels = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels[None]
        ratio = self.model.mask_ratio if mask_ratio is None else mask_ratio
        from ..models.masked_pretraining import random_patch_mask

        visible = random_patch_mask(1, self.model.grid, ratio, generator=torch.Generator().manual_seed(seed))
        normalised = ((pixels - self.mean) / self.std)[None].to(self.device)
        reconstruction = self.model(normalised, mode='predict', visible=visible.to(self.device))[0].cpu()
        reconstruction = (reconstruction * self.std + self.mean).clamp(0, 1)
        patch = self.model.downsample_ratio
        seen = visible[0].repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        masked = torch.where(seen, pixels, torch.full_like(pixels, 0.5))

        def to_image(tensor):
            array = tensor.permute(1, 2, 0).numpy()
            return array[..., 0] if array.shape[-1] == 1 else array
        return dict(input=to_image(pixels), masked=to_image(masked), reconstruction=to_image(reconstruction),
                    visible=visible[0].numpy())


def save_reconstruction_figure(results: Sequence[Dict[str, np.ndarray]], out_file: Union[str, Path],
                               titles: Optional[List[str]] = None) -> Path:
    """One row per image: input, masked input (grey patches hidden), reconstruction; a PNG written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 3, figsize=(7.5, 2.7 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        hidden = 1 - result['visible'].mean()
        for column, (key, label) in enumerate((('input', 'input'), ('masked', f'{hidden:.0%} of patches hidden'),
                                               ('reconstruction', 'reconstruction'))):
            axis = axes[row, column]
            axis.imshow(result[key], cmap='gray' if result[key].ndim == 2 else None, vmin=0, vmax=1)
            axis.set_title(label if titles is None or column else f'{titles[row]}: {label}', fontsize=9)
            axis.axis('off')
    figure.tight_layout()
    return save_atomically(out_file, lambda path: figure.savefig(path, dpi=110, format='png'),
                           on_done=lambda: plt.close(figure))
