"""Interoperability with spconv, spconv 1.x checkpoints, torchsparse and MinkowskiEngine.

Weight layouts (``D`` spatial axes, ``K = prod(kernel)`` taps):

* ours and spconv >= 2.2: ``[out, *kernel, in]``, axes in coordinate order (z, y, x), last axis fastest;
* spconv 1.x (and mmcv's port): ``[*kernel, in, out]``;
* torchsparse / MinkowskiEngine: ``[K, in, out]`` with taps enumerated x fastest over (x, y, z)
  coordinates. With coordinates reordered to our (z, y, x) the tap numbering coincides, so only the
  channel axes move (odd kernels, centred as in both libraries).

One-tap kernels are the exception: our kernel-1 layers read the parameter's memory as an ``[in, out]`` matrix, as
spconv 2.x does (:class:`~sparsevision.sparse.SparseConvolution`), which is also the memory of a one-tap spconv 1.x or
Minkowski kernel, so the converters keep one-tap memory as it is and only change the shape. (A strided kernel-1
convolution, which reads its weight per tap, is converted by :func:`convert_spconv1_state_dict`, which sees the layer.)
"""
import math
from typing import Dict, Sequence

import torch

from ..utils.optional import import_optional
from .conv import SparseConvolution
from .tensor import SparseTensor


def from_spconv(x) -> SparseTensor:
    """A :class:`SparseTensor` with the features, indices and shape of a ``spconv.pytorch.SparseConvTensor``."""
    return SparseTensor(x.features, x.indices, list(x.spatial_shape), x.batch_size)


def to_spconv(x: SparseTensor):
    """The ``spconv.pytorch.SparseConvTensor`` of ``x`` (needs spconv installed)."""
    spconv = import_optional('spconv.pytorch', 'spconv', 'to_spconv')

    return spconv.SparseConvTensor(x.features, x.indices, x.spatial_shape, x.batch_size)


def weight_from_spconv1(weight: torch.Tensor) -> torch.Tensor:
    """spconv 1.x ``[*kernel, in, out]`` -> ours ``[out, *kernel, in]`` (one tap: same memory, see the module notes)."""
    if math.prod(weight.shape[:-2]) == 1:
        return weight.contiguous().reshape(weight.shape[-1], *weight.shape[:-2], weight.shape[-2])
    return weight.movedim(-1, 0).contiguous()


def weight_to_spconv1(weight: torch.Tensor) -> torch.Tensor:
    """ours ``[out, *kernel, in]`` -> spconv 1.x ``[*kernel, in, out]`` (one tap: same memory)."""
    if math.prod(weight.shape[1:-1]) == 1:
        return weight.contiguous().reshape(*weight.shape[1:-1], weight.shape[-1], weight.shape[0])
    return weight.movedim(0, -1).contiguous()


def weight_from_minkowski(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """torchsparse / MinkowskiEngine ``[K, in, out]`` (or ``[in, out]`` for one tap) -> ours ``[out, *kernel, in]``
    (one tap: same memory, see the module notes).

    Args:
        weight: their kernel.
        kernel_size: our kernel size in (z, y, x) order.
    """
    if weight.dim() == 2:
        weight = weight.unsqueeze(0)
    taps, in_channels, out_channels = weight.shape
    if taps != math.prod(kernel_size):
        raise ValueError(f'weight has {taps} taps but kernel_size {list(kernel_size)} has {math.prod(kernel_size)}')
    if taps == 1:
        return weight.contiguous().reshape(out_channels, *kernel_size, in_channels)
    return weight.permute(2, 0, 1).reshape(out_channels, *kernel_size, in_channels).contiguous()


def weight_to_minkowski(weight: torch.Tensor) -> torch.Tensor:
    """ours ``[out, *kernel, in]`` -> torchsparse / MinkowskiEngine ``[K, in, out]`` (one tap: same memory)."""
    if math.prod(weight.shape[1:-1]) == 1:
        return weight.contiguous().reshape(1, weight.shape[-1], weight.shape[0])
    return weight.reshape(weight.shape[0], -1, weight.shape[-1]).permute(1, 2, 0).contiguous()


def convert_spconv1_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rewrite the sparse-convolution weights of a spconv 1.x checkpoint into our layout for ``model``.

    Raises:
        ValueError: when a convolution weight has neither layout.
    """
    converted = dict(state_dict)
    for name, module in model.named_modules():
        key = f'{name}.weight' if name else 'weight'
        if isinstance(module, SparseConvolution) and key in converted:
            weight = converted[key]
            if weight.shape == module.weight.shape:
                continue
            if weight.movedim(-1, 0).shape != module.weight.shape:
                raise ValueError(f'{key}: shape {tuple(weight.shape)} is neither ours {tuple(module.weight.shape)} '
                                 'nor spconv 1.x [*kernel, in, out]')
            converted[key] = (weight_from_spconv1(weight) if module.reads_weight_as_matrix
                              else weight.movedim(-1, 0).contiguous())
    return converted
