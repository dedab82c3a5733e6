"""Feature maps that exist only at the visible sites of a patch mask, run through unmodified backbones.

A backbone's ``forward`` calls torch functions and tensor methods on its input
(``F.conv2d``, ``F.batch_norm``, ``x + shortcut``, ``x.permute(...)``...).
:class:`MaskedFeatureMap` answers each one it knows with a mask-aware version
through ``__torch_function__``, so any CNN built from known pieces runs masked
without a line of it changed; anything else raises a TypeError naming the
function, never a silent dense fallback. Two representations give the same
numbers: :class:`~.sparse_site_map.SparseSiteMap` computes only at the visible
sites, :class:`~.masked_dense_map.MaskedDenseMap` computes densely and re-masks.
"""
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

from .masking import MaskPyramid

# torch functions answered by each handler method of the map classes
_HANDLERS: Dict[Callable, str] = {}


def _register(name: str, *functions: Callable) -> None:
    for function in functions:
        _HANDLERS[function] = name


_register('conv2d', F.conv2d, torch.conv2d)
_register('batch_norm', F.batch_norm, torch.batch_norm)
_register('layer_norm', F.layer_norm, torch.layer_norm)
_register('linear', F.linear)
_register('max_pool2d', F.max_pool2d, torch.max_pool2d)
_register('avg_pool2d', F.avg_pool2d)
_register('adaptive_avg_pool2d', F.adaptive_avg_pool2d)
_register('reduce', torch.mean, torch.sum, torch.norm, torch.Tensor.mean, torch.Tensor.sum, torch.Tensor.norm)
# zero at a masked site stays zero: a dense emulation needs no re-masking after these
ZERO_PRESERVING = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish,
                   F.leaky_relu, F.dropout, torch.tanh, torch.Tensor.relu, torch.Tensor.relu_, torch.Tensor.tanh,
                   torch.Tensor.mul, torch.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__imul__,
                   torch.Tensor.mul_}
# sums of maps stay zero at masked sites; with any other tensor they need re-masking
SUMS = {torch.add, torch.sub, torch.Tensor.add, torch.Tensor.sub, torch.Tensor.__add__, torch.Tensor.__radd__,
        torch.Tensor.__iadd__, torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.add_}
_register('_elementwise', *ZERO_PRESERVING, *SUMS, torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid,
          torch.Tensor.sigmoid_, F.hardsigmoid, torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.addcmul,
          torch.where, F.elu, F.mish)


def parse_arguments(args: Sequence, kwargs: dict, names_and_defaults: Sequence[Tuple[str, object]]) -> list:
    """Positional and keyword arguments of a torch function, in signature order, defaults filled in."""
    values = list(args) + [kwargs.pop(name, default) for name, default in names_and_defaults[len(args):]]
    if kwargs:
        raise TypeError(f'unexpected arguments {sorted(kwargs)}')
    return values


def pair(value, name: str) -> Tuple[int, int]:
    """An int or a 2-sequence of ints as a pair."""
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return int(value[0]), int(value[0])
    if len(value) != 2:
        raise TypeError(f'{name} must be an int or two ints for a 2D map, got {value}')
    return int(value[0]), int(value[1])


def window_geometry(size: Tuple[int, int], kernel_size, stride, padding, dilation):
    """Kernel, stride, padding and dilation as pairs (``'same'``/``'valid'`` padding resolved) and the output size."""
    kernel, dilation = pair(kernel_size, 'kernel_size'), pair(dilation, 'dilation')
    stride = kernel if stride is None or stride == [] else pair(stride, 'stride')
    if padding == 'valid':
        padding = (0, 0)
    elif padding == 'same':
        if stride != (1, 1) or any(k % 2 == 0 for k in kernel):
            raise TypeError("padding='same' on a masked map needs stride 1 and odd kernels")
        padding = tuple(k // 2 * d for k, d in zip(kernel, dilation))
    else:
        padding = pair(padding, 'padding')
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))
    return kernel, stride, padding, dilation, out


class MaskedFeatureMap:
    """A ``[B, C, H, W]`` feature map (``[B, H, W, C]`` after ``permute(0, 2, 3, 1)``) that is zero where masked.

    Args:
        pyramid: the batch's patch mask at every resolution.
        size: ``(H, W)``.
        channels: ``C``.
        channels_last: whether the logical layout is ``[B, H, W, C]``.
    """

    def __init__(self, pyramid: MaskPyramid, size: Tuple[int, int], channels: int, channels_last: bool = False):
        self.pyramid, self.size_hw, self.channels, self.channels_last = pyramid, tuple(size), channels, channels_last

    # ----- what backbones read off a tensor
    @property
    def shape(self) -> torch.Size:
        batch, (height, width) = self.pyramid.batch_size, self.size_hw
        if self.channels_last:
            return torch.Size((batch, height, width, self.channels))
        return torch.Size((batch, self.channels, height, width))

    @property
    def ndim(self) -> int:
        return 4

    def dim(self) -> int:
        return 4

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def dtype(self) -> torch.dtype:
        return self.payload.dtype

    @property
    def device(self) -> torch.device:
        return self.payload.device

    @property
    def payload(self) -> torch.Tensor:
        """The tensor that holds the values (features at the sites, or the dense map)."""
        raise NotImplementedError

    def new_empty(self, *shape, **kwargs) -> torch.Tensor:
        return self.payload.new_empty(*shape, **kwargs)

    def new_zeros(self, *shape, **kwargs) -> torch.Tensor:
        return self.payload.new_zeros(*shape, **kwargs)

    def __getattr__(self, name: str):
        """Other tensor methods go through ``__torch_function__``: a masked version, or a TypeError naming them."""
        method = getattr(torch.Tensor, name, None)
        if name.startswith('_') or not callable(method):
            raise AttributeError(f'{type(self).__name__} has no attribute {name!r}')
        return lambda *args, **kwargs: type(self).__torch_function__(method, (), (self, *args), kwargs)

    def contiguous(self, memory_format=None) -> 'MaskedFeatureMap':
        return self

    def permute(self, *dims) -> 'MaskedFeatureMap':
        dims = tuple(dims[0]) if len(dims) == 1 and not isinstance(dims[0], int) else dims
        if dims == (0, 1, 2, 3):
            return self
        if dims == ((0, 3, 1, 2) if self.channels_last else (0, 2, 3, 1)):
            return self._relayout(not self.channels_last)
        raise TypeError(f'a masked feature map only permutes between [B, C, H, W] and [B, H, W, C], got {dims}')

    # ----- arithmetic
    def __add__(self, other):
        return self._elementwise(torch.add, (self, other), {})

    def __radd__(self, other):
        return self._elementwise(torch.add, (other, self), {})

    __iadd__ = add = __add__

    def __sub__(self, other):
        return self._elementwise(torch.sub, (self, other), {})

    def __rsub__(self, other):
        return self._elementwise(torch.sub, (other, self), {})

    def __mul__(self, other):
        return self._elementwise(torch.mul, (self, other), {})

    __rmul__ = __imul__ = mul = __mul__

    def __truediv__(self, other):
        return self._elementwise(torch.div, (self, other), {})

    # ----- per-sample reductions over the visible sites
    def mean(self, dim=None, keepdim: bool = False, dtype=None) -> torch.Tensor:
        return self._reduce('mean', dim, keepdim)

    def sum(self, dim=None, keepdim: bool = False, dtype=None) -> torch.Tensor:
        return self._reduce('sum', dim, keepdim)

    def norm(self, p=2, dim=None, keepdim: bool = False, dtype=None) -> torch.Tensor:
        if p not in (2, 'fro'):
            raise TypeError(f'only the L2 norm over the visible sites is supported on a masked map, got p={p}')
        return self._reduce('norm', dim, keepdim)

    def _reduce(self, kind: str, dim, keepdim: bool) -> torch.Tensor:
        spatial = (1, 2) if self.channels_last else (2, 3)
        dims = tuple(sorted(d % 4 for d in ((dim,) if isinstance(dim, int) else dim or ())))
        if dims != spatial:
            raise TypeError(f'a masked map reduces only over its spatial dims {spatial} (per sample, over the '
                            f'visible sites), got dim={dim}')
        per_sample = self._spatial_reduce(kind)  # [B, C]
        if not keepdim:
            return per_sample
        return per_sample[:, None, None, :] if self.channels_last else per_sample[:, :, None, None]

    def reduce(self, function, args, kwargs):
        names = [('input', None), ('dim', None), ('keepdim', False), ('dtype', None)]
        if function in (torch.norm, torch.Tensor.norm):
            names = [('input', None), ('p', 2), ('dim', None), ('keepdim', False), ('dtype', None)]
        values = parse_arguments(args, dict(kwargs), names)
        kind = 'norm' if len(names) == 5 else 'mean' if function in (torch.mean, torch.Tensor.mean) else 'sum'
        return getattr(values[0], kind)(*values[1:])

    def adaptive_avg_pool2d(self, function, args, kwargs):
        x, output_size = parse_arguments(args, dict(kwargs), [('input', None), ('output_size', None)])
        if pair(output_size, 'output_size') != (1, 1) or self.channels_last:
            raise TypeError('adaptive average pooling of a masked [B, C, H, W] map is supported only to 1x1 (the '
                            'mean over the visible sites)')
        return self.mean((2, 3), keepdim=True)

    # ----- dispatch
    @classmethod
    def __torch_function__(cls, function, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(function)
        name = getattr(function, '__qualname__', getattr(function, '__name__', repr(function)))
        if handler is None:
            raise TypeError(f'{name} has no masked version, so this backbone cannot run on masked feature maps; '
                            'supported are 2D convolution, batch/layer norm, linear, max/avg pooling, global '
                            'average pooling, element-wise activations and arithmetic, and per-sample spatial '
                            'mean/sum/norm')
        maps = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, MaskedFeatureMap)]
        first = maps[0]
        for other in maps[1:]:
            if type(other) is not type(first) or other.pyramid is not first.pyramid:
                raise TypeError(f'{name}: masked maps of different masks or representations cannot be combined')
            if other.size_hw != first.size_hw or other.channels_last != first.channels_last:
                raise TypeError(f'{name}: masked maps of sizes {first.shape} and {other.shape} cannot be combined')
        return getattr(first, handler)(function, args, kwargs)

    def _site_arguments(self, function, args, kwargs, convert_map, convert_tensor):
        """``args``/``kwargs`` with maps and other tensors replaced by what ``function`` runs on."""
        def convert(value):
            if isinstance(value, MaskedFeatureMap):
                return convert_map(value)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return convert_tensor(value)
            return value
        return tree_map(convert, (args, kwargs))

    def broadcast_parts(self, tensor: torch.Tensor) -> Tuple[int, torch.Tensor]:
        """A tensor that broadcasts against this map as ``(samples, [samples, channels])``.

        Raises:
            TypeError: when it varies over space (a full-resolution dense tensor has no masked meaning).
        """
        if tensor.dim() > 4:
            raise TypeError(f'a tensor of shape {tuple(tensor.shape)} does not broadcast against a 4-D map')
        tensor = tensor.reshape((1,) * (4 - tensor.dim()) + tuple(tensor.shape))
        spatial, channel = ((1, 2), 3) if self.channels_last else ((2, 3), 1)
        if any(tensor.shape[d] != 1 for d in spatial):
            raise TypeError(f'a tensor of shape {tuple(tensor.shape)} varies over space and cannot be combined with '
                            'a masked feature map; only per-channel or per-sample tensors can')
        if tensor.shape[0] not in (1, self.pyramid.batch_size):
            raise TypeError(f'a tensor of shape {tuple(tensor.shape)} does not match the batch of {self.shape}')
        return tensor.shape[0], tensor.reshape(tensor.shape[0], tensor.shape[channel])

    # ----- implemented by each representation
    def _relayout(self, channels_last: bool) -> 'MaskedFeatureMap':
        raise NotImplementedError

    def _elementwise(self, function, args, kwargs) -> 'MaskedFeatureMap':
        raise NotImplementedError

    def _spatial_reduce(self, kind: str) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """``[B, C, H, W]`` with zeros at the masked sites."""
        raise NotImplementedError


CONV2D_ARGUMENTS = [('input', None), ('weight', None), ('bias', None), ('stride', 1), ('padding', 0), ('dilation', 1),
                    ('groups', 1)]
BATCH_NORM_ARGUMENTS = [('input', None), ('running_mean', None), ('running_var', None), ('weight', None),
                        ('bias', None), ('training', False), ('momentum', 0.1), ('eps', 1e-5)]
LAYER_NORM_ARGUMENTS = [('input', None), ('normalized_shape', None), ('weight', None), ('bias', None), ('eps', 1e-5)]
LINEAR_ARGUMENTS = [('input', None), ('weight', None), ('bias', None)]
MAX_POOL_ARGUMENTS = [('input', None), ('kernel_size', None), ('stride', None), ('padding', 0), ('dilation', 1),
                      ('ceil_mode', False), ('return_indices', False)]
AVG_POOL_ARGUMENTS = [('input', None), ('kernel_size', None), ('stride', None), ('padding', 0), ('ceil_mode', False),
                      ('count_include_pad', True), ('divisor_override', None)]


def require_layout(feature_map: MaskedFeatureMap, channels_last: bool, operation: str) -> None:
    """Raise a TypeError when ``operation`` meets the map in the other layout."""
    if feature_map.channels_last != channels_last:
        wanted = '[B, H, W, C]' if channels_last else '[B, C, H, W]'
        raise TypeError(f'{operation} on a masked map needs the {wanted} layout (as it would on a dense tensor)')


def check_batch_norm_rows(rows: int, training: bool) -> None:
    """Batch statistics over one visible site are undefined, as they are for a dense 1x1 batch of one."""
    if training and rows == 1:
        raise ValueError('batch norm in training needs more than one visible site per channel, got 1: use a larger '
                         'batch, a lower mask ratio, or put the batch norm layers in eval mode')


def pool_geometry(feature_map: MaskedFeatureMap, mode: str, args, kwargs):
    """Kernel, stride, padding, dilation and output size of ``F.max_pool2d`` / ``F.avg_pool2d`` on a masked map.

    Averages are over the visible sites of each window (padding never counts).
    ``ceil_mode`` is accepted where it gives the floor-mode size.
    """
    if mode == 'max':
        _, kernel, stride, padding, dilation, ceil_mode, return_indices = parse_arguments(args, dict(kwargs),
                                                                                          MAX_POOL_ARGUMENTS)
        unsupported = return_indices
    else:
        _, kernel, stride, padding, ceil_mode, _, divisor = parse_arguments(args, dict(kwargs), AVG_POOL_ARGUMENTS)
        dilation, unsupported = 1, divisor is not None
    require_layout(feature_map, False, f'{mode}_pool2d')
    kernel, stride, padding, dilation, out_size = window_geometry(feature_map.size_hw, kernel, stride, padding,
                                                                  dilation)
    ceil_size = tuple(-(-(n + 2 * p - d * (k - 1) - 1) // s) + 1
                      for n, k, s, p, d in zip(feature_map.size_hw, kernel, stride, padding, dilation))
    if unsupported or (ceil_mode and ceil_size != out_size):
        raise TypeError(f'{mode} pooling on a masked map supports neither return_indices, a divisor override nor a '
                        'ceil_mode that changes the output size')
    return kernel, stride, padding, dilation, out_size
