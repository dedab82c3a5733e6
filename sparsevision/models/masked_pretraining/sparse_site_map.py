"""Masked feature maps stored at the visible sites only: real sparse compute."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ... import ops
from ...sparse.norm import row_batch_norm
from ...sparse.pool import pool_features
from .feature_maps import (BATCH_NORM_ARGUMENTS, CONV2D_ARGUMENTS, LAYER_NORM_ARGUMENTS, LINEAR_ARGUMENTS,
                           MaskedFeatureMap, check_batch_norm_rows, parse_arguments, pool_geometry, require_layout,
                           window_geometry)
from .masking import MaskPyramid


class SparseSiteMap(MaskedFeatureMap):
    """``[N, C]`` features at the visible sites (row-major); convolutions run on the sparse engine.

    A submanifold convolution keeps the visible sites; a strided one reads the
    visible sites of its input and writes those of its output resolution. The
    work scales with the visible share of the image.
    """

    def __init__(self, features: torch.Tensor, pyramid: MaskPyramid, size: Tuple[int, int],
                 channels_last: bool = False):
        super().__init__(pyramid, size, features.shape[1], channels_last)
        self.features = features

    @classmethod
    def from_dense(cls, dense: torch.Tensor, pyramid: MaskPyramid) -> 'SparseSiteMap':
        """The visible sites of a dense ``[B, C, H, W]`` tensor."""
        return cls(dense.permute(0, 2, 3, 1)[pyramid.mask(*dense.shape[2:])], pyramid, tuple(dense.shape[2:]))

    @property
    def payload(self) -> torch.Tensor:
        return self.features

    def _with(self, features: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> 'SparseSiteMap':
        return SparseSiteMap(features, self.pyramid, size or self.size_hw, self.channels_last)

    def _relayout(self, channels_last: bool) -> 'SparseSiteMap':
        return SparseSiteMap(self.features, self.pyramid, self.size_hw, channels_last)

    def _elementwise(self, function, args, kwargs) -> 'SparseSiteMap':
        def per_site(tensor):
            samples, per_sample = self.broadcast_parts(tensor)
            return per_sample[0] if samples == 1 else per_sample[self.pyramid.batch_index(*self.size_hw)]
        args, kwargs = self._site_arguments(function, args, kwargs, lambda m: m.features, per_site)
        return self._with(function(*args, **kwargs))

    def conv2d(self, function, args, kwargs) -> 'SparseSiteMap':
        _, weight, bias, stride, padding, dilation, groups = parse_arguments(args, dict(kwargs), CONV2D_ARGUMENTS)
        require_layout(self, False, 'conv2d')
        kernel, stride, padding, dilation, out_size = window_geometry(self.size_hw, weight.shape[2:], stride, padding,
                                                                      dilation)
        taps = kernel[0] * kernel[1]
        if taps == 1 and stride == (1, 1) and padding == (0, 0) and groups == 1:
            return self._with(F.linear(self.features, weight.reshape(weight.shape[0], -1), bias))
        neighbors, inverse = self.pyramid.kernel_map(self.size_hw, out_size, kernel, stride, padding, dilation)
        # torch's [out, in / groups, kh, kw] -> the engine's [taps, in / groups, out]
        engine_weight = weight.permute(2, 3, 1, 0).reshape(taps, weight.shape[1], weight.shape[0])
        features = ops.sparse_conv(self.features, engine_weight.contiguous(), neighbors, inverse, groups)
        return self._with(features if bias is None else features + bias, out_size)

    def batch_norm(self, function, args, kwargs) -> 'SparseSiteMap':
        _, mean, var, weight, bias, training, momentum, eps = parse_arguments(args, dict(kwargs),
                                                                              BATCH_NORM_ARGUMENTS)
        require_layout(self, False, 'batch_norm')
        if self.features.shape[0] == 0:
            return self   # nothing visible: nothing to normalise, statistics untouched
        check_batch_norm_rows(self.features.shape[0], training)
        return self._with(row_batch_norm(self.features, mean, var, weight, bias, training, momentum, eps))

    def layer_norm(self, function, args, kwargs) -> 'SparseSiteMap':
        _, shape, weight, bias, eps = parse_arguments(args, dict(kwargs), LAYER_NORM_ARGUMENTS)
        require_layout(self, True, 'layer_norm')
        return self._with(F.layer_norm(self.features, shape, weight, bias, eps))

    def linear(self, function, args, kwargs) -> 'SparseSiteMap':
        _, weight, bias = parse_arguments(args, dict(kwargs), LINEAR_ARGUMENTS)
        require_layout(self, True, 'linear')
        return self._with(F.linear(self.features, weight, bias))

    def max_pool2d(self, function, args, kwargs) -> 'SparseSiteMap':
        return self._pool('max', args, kwargs)

    def avg_pool2d(self, function, args, kwargs) -> 'SparseSiteMap':
        return self._pool('avg', args, kwargs)

    def _pool(self, mode, args, kwargs) -> 'SparseSiteMap':
        kernel, stride, padding, dilation, out_size = pool_geometry(self, mode, args, kwargs)
        neighbors, _ = self.pyramid.kernel_map(self.size_hw, out_size, kernel, stride, padding, dilation)
        return self._with(pool_features(self.features, neighbors, mode), out_size)

    def _spatial_reduce(self, kind: str) -> torch.Tensor:
        counts = self.pyramid.visible_counts(*self.size_hw)
        values = self.features * self.features if kind == 'norm' else self.features
        sums = torch.segment_reduce(values, 'sum', lengths=counts, axis=0)
        if kind == 'norm':
            return sums.sqrt()
        return sums / counts.clamp(min=1)[:, None].to(sums.dtype) if kind == 'mean' else sums

    def to_dense(self) -> torch.Tensor:
        """The map in its logical layout with zeros at the masked sites."""
        height, width = self.size_hw
        dense = self.features.new_zeros(self.pyramid.batch_size, height, width, self.channels)
        dense = dense.index_put((self.pyramid.mask(height, width),), self.features)
        return dense if self.channels_last else dense.permute(0, 3, 1, 2)
