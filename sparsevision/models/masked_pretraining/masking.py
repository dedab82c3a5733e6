"""Patch masks for masked image modelling: drawing them, and their visible sites at every resolution."""
from typing import Dict, Optional, Sequence, Tuple

import torch

from ... import ops


def check_mask_ratio(mask_ratio: float) -> float:
    """``mask_ratio`` as a float in ``[0, 1)``, or a ValueError saying why not."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f'mask_ratio must lie in [0, 1) (the share of patches hidden from the encoder), '
                         f'got {mask_ratio}')
    return float(mask_ratio)


def random_patch_mask(batch_size: int, grid: Sequence[int], mask_ratio: float, device=None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[B, gh, gw]`` bool, ``True`` where a patch is visible; each sample hides ``round(ratio * L)`` patches.

    At least one patch per sample stays visible (a fully hidden image is still
    accepted when passed explicitly, see :class:`MaskPyramid`).
    """
    check_mask_ratio(mask_ratio)
    patches = grid[0] * grid[1]
    hidden = min(round(mask_ratio * patches), patches - 1)
    noise = torch.rand(batch_size, patches, generator=generator, device='cpu')
    order = noise.argsort(dim=1)
    visible = torch.ones(batch_size, patches, dtype=torch.bool)
    visible.scatter_(1, order[:, :hidden], False)
    return visible.reshape(batch_size, *grid).to(device)


class MaskPyramid:
    """One batch's patch mask seen at any resolution that is a multiple of its grid.

    A site of an ``H x W`` map is visible when the patch it falls in is. The
    masks, the visible sites (batch, y, x in row-major order, the order of
    ``dense.permute(0, 2, 3, 1)[mask]``) and the kernel maps between them are
    computed once per resolution and shared by every layer of one forward.

    Args:
        visible: ``[B, gh, gw]`` bool patch mask (``True`` = visible).
    """

    def __init__(self, visible: torch.Tensor):
        if visible.dim() != 3 or visible.dtype != torch.bool:
            raise ValueError(f'the patch mask must be a [batch, grid_h, grid_w] bool tensor (True = visible), got '
                             f'{visible.dtype} of shape {tuple(visible.shape)}')
        self.visible = visible
        self.batch_size, self.grid = visible.shape[0], tuple(visible.shape[1:])
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {}
        self._sites: Dict[Tuple[int, int], torch.Tensor] = {}
        self._kernel_maps: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def mask(self, height: int, width: int) -> torch.Tensor:
        """``[B, H, W]`` bool visibility of every site of an ``H x W`` map."""
        key = (height, width)
        if key not in self._masks:
            grid_h, grid_w = self.grid
            if height % grid_h or width % grid_w:
                raise ValueError(f'a {height}x{width} feature map does not split into the {grid_h}x{grid_w} mask grid; '
                                 'every feature map the encoder makes must be a multiple of the mask grid (choose an '
                                 'input size that is a multiple of the downsample ratio)')
            self._masks[key] = (self.visible.repeat_interleave(height // grid_h, dim=1)
                                .repeat_interleave(width // grid_w, dim=2))
        return self._masks[key]

    def sites(self, height: int, width: int) -> torch.Tensor:
        """``[N, 3]`` int32 (batch, y, x) of the visible sites, row-major."""
        key = (height, width)
        if key not in self._sites:
            self._sites[key] = self.mask(height, width).nonzero().to(torch.int32).contiguous()
        return self._sites[key]

    def batch_index(self, height: int, width: int) -> torch.Tensor:
        """``[N]`` int64 sample of every visible site."""
        return self.sites(height, width)[:, 0].long()

    def visible_counts(self, height: int, width: int) -> torch.Tensor:
        """``[B]`` int64 visible sites per sample."""
        return self.mask(height, width).flatten(1).sum(dim=1)

    def kernel_map(self, in_size: Tuple[int, int], out_size: Tuple[int, int], kernel_size: Tuple[int, int],
                   stride: Tuple[int, int], padding: Tuple[int, int],
                   dilation: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Kernel map and its inverse from the visible sites at ``in_size`` to those at ``out_size``."""
        key = (in_size, out_size, kernel_size, stride, padding, dilation)
        if key not in self._kernel_maps:
            in_sites = self.sites(*in_size)
            submanifold = (in_size == out_size and stride == (1, 1)
                           and all(k % 2 == 1 and p == k // 2 * d for k, p, d in zip(kernel_size, padding, dilation)))
            out_sites = in_sites if submanifold else self.sites(*out_size)
            neighbors = ops.build_kernel_map(in_sites, out_sites, in_size, kernel_size, stride, padding, dilation)
            # a centred kernel on the same sites is symmetric: tap k one way is tap K-1-k the other
            inverse = (neighbors.flip(1).contiguous() if submanifold
                       else ops.invert_kernel_map(neighbors, in_sites.shape[0]))
            self._kernel_maps[key] = (neighbors, inverse)
        return self._kernel_maps[key]
