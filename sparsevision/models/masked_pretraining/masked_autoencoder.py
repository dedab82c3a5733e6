"""What SparK and FCMAE share: masking, the masked encoder, the per-patch loss and reconstructions."""
from typing import List, Optional, Tuple

import torch
from mmengine.model import BaseModel

from ...registry import MODELS
from .encoder import check_maskable, encode_masked
from .feature_maps import MaskedFeatureMap, pair
from .masking import check_mask_ratio, random_patch_mask


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, L, p * p * C]``, patches row-major, pixels (y, x, channel) within a patch."""
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: Tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    batch, _, values = patches.shape
    channels = values // (patch_size * patch_size)
    images = patches.reshape(batch, grid[0], grid[1], patch_size, patch_size, channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid[0] * patch_size, grid[1] * patch_size)


def patch_statistics(patches: torch.Tensor, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and standard deviation (``sqrt(var + eps)``), ``[B, L, 1]`` each."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps).sqrt()


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch to zero mean and unit variance (the per-patch target of MAE and SparK)."""
    mean, std = patch_statistics(patches)
    return (patches - mean) / std


def masked_patch_loss(predicted: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the hidden patches (zero when none is hidden)."""
    per_patch = (predicted - target).pow(2).mean(dim=-1)
    hidden = (~visible.flatten(1)).to(per_patch.dtype)
    return (per_patch * hidden).sum() / hidden.sum().clamp(min=1)


class MaskedAutoencoder(BaseModel):
    """A CNN encoder that sees only the visible patches, a decoder that predicts the hidden ones.

    The mask is an explicit argument everywhere (no module-global state): pass
    ``visible`` to :meth:`forward` or let it draw a random one.

    Args:
        backbone: config (or module) of a CNN returning one or more feature maps;
            any layer without a masked version is named at construction.
        input_size: ``(H, W)`` or one int; a multiple of the encoder's downsample ratio.
        in_channels: image channels.
        mask_ratio: share of patches hidden, in ``[0, 1)``; patches are downsample-ratio squares.
        sparse: compute at the visible sites only (``True``) or densely with
            re-masking (SparK's emulation; the same numbers, slower).
        normalize_target: predict per-patch normalised pixels.
        data_preprocessor: mmengine data preprocessor config.
        init_cfg: mmengine initialisation config.
    """

    def __init__(self, backbone, input_size, in_channels: int = 3, mask_ratio: float = 0.6, sparse: bool = True,
                 normalize_target: bool = True, data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
        check_maskable(self.backbone)
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.input_size, self.in_channels = pair(input_size, 'input_size'), in_channels
        self.sparse, self.normalize_target = sparse, normalize_target
        self.scale_channels, self.scale_strides = self._probe_scales()
        self.downsample_ratio = max(self.scale_strides)
        self.grid = tuple(size // self.downsample_ratio for size in self.input_size)

    def _probe_scales(self) -> Tuple[List[int], List[int]]:
        """Channels and strides of the backbone's outputs, from one dense forward at the input size."""
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            outputs = self.backbone(torch.zeros(1, self.in_channels, *self.input_size))
        self.backbone.train(was_training)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        strides = []
        for output in outputs:
            stride_h, stride_w = (size // max(out, 1) for size, out in zip(self.input_size, output.shape[2:]))
            if stride_h != stride_w or stride_h * output.shape[2] != self.input_size[0] \
                    or stride_w * output.shape[3] != self.input_size[1]:
                raise ValueError(f'input size {self.input_size} is not a multiple of the encoder\'s strides (an '
                                 f'output is {tuple(output.shape[2:])}); use a multiple of its downsample ratio')
            strides.append(stride_h)
        return [output.shape[1] for output in outputs], strides

    def random_mask(self, batch_size: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[B, gh, gw]`` bool, ``True`` = visible, hiding ``mask_ratio`` of each sample's patches."""
        return random_patch_mask(batch_size, self.grid, self.mask_ratio, device, generator)

    def encode(self, images: torch.Tensor, visible: torch.Tensor) -> List[MaskedFeatureMap]:
        """The backbone's maps of the visible patches (see :func:`encode_masked`)."""
        return encode_masked(self.backbone, images, visible, self.sparse)

    def predict_patches(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``[B, L, p * p * C]`` predicted pixels of every patch."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'loss',
                visible: Optional[torch.Tensor] = None):
        """``'loss'``: ``{'loss': ...}``; ``'predict'``/``'tensor'``: reconstructions (see :meth:`reconstruct`)."""
        self._check_images(inputs)
        if visible is None:
            visible = self.random_mask(inputs.shape[0], inputs.device)
        elif tuple(visible.shape) != (inputs.shape[0], *self.grid) or visible.dtype != torch.bool:
            raise ValueError(f'visible must be a bool mask of shape {(inputs.shape[0], *self.grid)} (batch, patch '
                             f'grid), got {visible.dtype} {tuple(visible.shape)}')
        if mode == 'loss':
            target = patchify(inputs, self.downsample_ratio)
            target = normalize_patches(target) if self.normalize_target else target
            return {'loss': masked_patch_loss(self.predict_patches(inputs, visible), target, visible)}
        if mode in ('predict', 'tensor'):
            return self.reconstruct(inputs, visible)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def reconstruct(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]``: the input at visible patches, the prediction at hidden ones.

        With ``normalize_target`` the prediction is mapped back to pixels with
        each hidden patch's true mean and variance, as MAE's and SparK's
        visualisations do; its structure is the model's own.
        """
        patch = self.downsample_ratio
        with torch.no_grad():
            predicted = self.predict_patches(images, visible)
            target = patchify(images, patch)
            if self.normalize_target:
                mean, std = patch_statistics(target)
                predicted = predicted * std + mean
            merged = torch.where(visible.flatten(1)[..., None], target, predicted)
        return unpatchify(merged, patch, self.grid)

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.in_channels, *self.input_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f'{type(self).__name__} was built for [B, {expected[0]}, {expected[1]}, {expected[2]}] '
                             f'images, got {tuple(images.shape)}; resize to input_size (a multiple of the '
                             f'downsample ratio {self.downsample_ratio})')
