"""Masked feature maps stored densely and re-masked after every op that could fill masked sites (SparK's emulation)."""
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from ...sparse.norm import row_batch_norm

from .feature_maps import (BATCH_NORM_ARGUMENTS, CONV2D_ARGUMENTS, LAYER_NORM_ARGUMENTS, LINEAR_ARGUMENTS, SUMS,
                           ZERO_PRESERVING, MaskedFeatureMap, check_batch_norm_rows, parse_arguments, pool_geometry,
                           require_layout)
from .masking import MaskPyramid


class MaskedDenseMap(MaskedFeatureMap):
    """A dense tensor kept at zero on the masked sites: every op costs what it costs unmasked.

    The reference for :class:`~.sparse_site_map.SparseSiteMap` (same numbers)
    and the baseline it is timed against. Batch norm gathers the visible rows
    as SparK does, so its statistics ignore the masked sites.
    """

    def __init__(self, dense: torch.Tensor, pyramid: MaskPyramid, channels_last: bool = False):
        size = tuple(dense.shape[1:3] if channels_last else dense.shape[2:])
        super().__init__(pyramid, size, dense.shape[3 if channels_last else 1], channels_last)
        self.dense = dense

    @classmethod
    def from_dense(cls, dense: torch.Tensor, pyramid: MaskPyramid) -> 'MaskedDenseMap':
        """A dense ``[B, C, H, W]`` tensor with its masked sites zeroed."""
        return cls(dense * pyramid.mask(*dense.shape[2:])[:, None].to(dense.dtype), pyramid)

    @property
    def payload(self) -> torch.Tensor:
        return self.dense

    def _site_mask(self, size=None, channels_last=None) -> torch.Tensor:
        """``[B, 1, H, W]`` (or ``[B, H, W, 1]``) bool visibility, broadcastable against the dense tensor."""
        channels_last = self.channels_last if channels_last is None else channels_last
        mask = self.pyramid.mask(*(size or self.size_hw))
        return mask[..., None] if channels_last else mask[:, None]

    def _masked(self, dense: torch.Tensor) -> 'MaskedDenseMap':
        size = tuple(dense.shape[1:3] if self.channels_last else dense.shape[2:])
        return MaskedDenseMap(dense * self._site_mask(size).to(dense.dtype), self.pyramid, self.channels_last)

    def _relayout(self, channels_last: bool) -> 'MaskedDenseMap':
        dims = (0, 2, 3, 1) if channels_last else (0, 3, 1, 2)
        return MaskedDenseMap(self.dense.permute(dims), self.pyramid, channels_last)

    def _elementwise(self, function, args, kwargs) -> 'MaskedDenseMap':
        def checked(tensor):
            self.broadcast_parts(tensor)   # the same errors as the sparse representation
            return tensor
        others = [a for a in tree_flatten(args)[0] if not isinstance(a, MaskedFeatureMap)
                  and isinstance(a, (torch.Tensor, int, float))]
        args, kwargs = self._site_arguments(function, args, kwargs, lambda m: m.dense, checked)
        dense = function(*args, **kwargs)
        if function in ZERO_PRESERVING or (function in SUMS and not others):
            return MaskedDenseMap(dense, self.pyramid, self.channels_last)
        return self._masked(dense)

    def conv2d(self, function, args, kwargs) -> 'MaskedDenseMap':
        _, weight, bias, stride, padding, dilation, groups = parse_arguments(args, dict(kwargs), CONV2D_ARGUMENTS)
        require_layout(self, False, 'conv2d')
        return self._masked(F.conv2d(self.dense, weight, bias, stride, padding, dilation, groups))

    def batch_norm(self, function, args, kwargs) -> 'MaskedDenseMap':
        _, mean, var, weight, bias, training, momentum, eps = parse_arguments(args, dict(kwargs),
                                                                              BATCH_NORM_ARGUMENTS)
        require_layout(self, False, 'batch_norm')
        mask = self.pyramid.mask(*self.size_hw)
        rows = self.dense.permute(0, 2, 3, 1)[mask]
        if rows.shape[0] == 0:
            return self
        check_batch_norm_rows(rows.shape[0], training)
        normalised = row_batch_norm(rows, mean, var, weight, bias, training, momentum, eps)
        dense = torch.zeros_like(self.dense.permute(0, 2, 3, 1)).index_put((mask,), normalised)
        return MaskedDenseMap(dense.permute(0, 3, 1, 2), self.pyramid)

    def layer_norm(self, function, args, kwargs) -> 'MaskedDenseMap':
        _, shape, weight, bias, eps = parse_arguments(args, dict(kwargs), LAYER_NORM_ARGUMENTS)
        require_layout(self, True, 'layer_norm')
        return self._masked(F.layer_norm(self.dense, shape, weight, bias, eps))

    def linear(self, function, args, kwargs) -> 'MaskedDenseMap':
        _, weight, bias = parse_arguments(args, dict(kwargs), LINEAR_ARGUMENTS)
        require_layout(self, True, 'linear')
        dense = F.linear(self.dense, weight, bias)
        return self._masked(dense) if bias is not None else MaskedDenseMap(dense, self.pyramid, True)

    def max_pool2d(self, function, args, kwargs) -> 'MaskedDenseMap':
        kernel, stride, padding, dilation, out_size = pool_geometry(self, 'max', args, kwargs)
        hidden = self.dense.masked_fill(~self._site_mask(), float('-inf'))
        pooled = F.max_pool2d(hidden, kernel, stride, padding, dilation)
        return MaskedDenseMap(torch.where(self._site_mask(out_size), pooled, 0.0), self.pyramid)

    def avg_pool2d(self, function, args, kwargs) -> 'MaskedDenseMap':
        kernel, stride, padding, _, _ = pool_geometry(self, 'avg', args, kwargs)
        sums = F.avg_pool2d(self.dense, kernel, stride, padding, count_include_pad=True)
        visible = F.avg_pool2d(self._site_mask().to(self.dense.dtype), kernel, stride, padding,
                               count_include_pad=True)
        return self._masked(sums / visible.clamp(min=torch.finfo(visible.dtype).tiny))

    def _spatial_reduce(self, kind: str) -> torch.Tensor:
        spatial = (1, 2) if self.channels_last else (2, 3)
        if kind == 'norm':
            return self.dense.norm(p=2, dim=spatial)
        sums = self.dense.sum(dim=spatial)
        if kind == 'sum':
            return sums
        counts = self.pyramid.visible_counts(*self.size_hw).clamp(min=1)
        return sums / counts[:, None].to(sums.dtype)

    def to_dense(self) -> torch.Tensor:
        """The map in its logical layout (already zero at the masked sites)."""
        return self.dense
