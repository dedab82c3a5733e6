"""Containers and small modules with spconv's names."""
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from .tensor import SparseTensor


class SparseModule(nn.Module):
    """Base of modules that take and return a :class:`SparseTensor` (spconv's marker class)."""


class SparseSequential(SparseModule):
    """Like ``nn.Sequential``; plain modules (BatchNorm1d, ReLU, ...) act on the features of a SparseTensor.

    Accepts modules positionally, as an ``OrderedDict``, or as keyword arguments (spconv's forms).
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(args):
                self.add_module(str(index), module)
        for name, module in kwargs.items():
            self.add_module(name, module)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def add(self, module: nn.Module, name: str = None) -> None:
        self.add_module(str(len(self._modules)) if name is None else name, module)

    def forward(self, x):
        modules = list(self._modules.values())
        index = 0
        while index < len(modules):
            module = modules[index]
            following = modules[index + 1] if index + 1 < len(modules) else None
            if isinstance(x, SparseTensor) and can_fuse_relu(module, following):
                x, index = module.forward_relu(x), index + 2
                continue
            if isinstance(module, SparseModule) or not isinstance(x, SparseTensor):
                x = module(x)
            else:
                x = x.replace_feature(module(x.features))
            index += 1
        return x


def _has_hooks(module: nn.Module) -> bool:
    hooks = nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or
                module._backward_pre_hooks or hooks._global_forward_hooks or hooks._global_forward_pre_hooks or
                hooks._global_backward_hooks or hooks._global_backward_pre_hooks)


def can_fuse_relu(norm: nn.Module, relu: Optional[nn.Module]) -> bool:
    """Whether ``relu(norm(x))`` may run as ``norm.forward_relu(x)``: ``norm`` offers it (``SparseBatchNorm``),
    ``relu`` is a plain ``nn.ReLU`` and neither has hooks (a hook must see what the unfused modules give)."""
    return (hasattr(norm, 'forward_relu') and type(relu) is nn.ReLU and not _has_hooks(norm)
            and not _has_hooks(relu))


def norm_relu(norm: nn.Module, relu: nn.Module, x: SparseTensor,
              residual: Optional[torch.Tensor] = None) -> SparseTensor:
    """``relu(norm(x))``, or ``relu(norm(x) + residual)`` (features), on a SparseTensor: one fused pass where
    :func:`can_fuse_relu` allows, else the modules one by one (the same bits)."""
    if can_fuse_relu(norm, relu):
        return norm.forward_relu(x, residual)
    out = norm(x)
    features = out.features if residual is None else out.features + residual
    return out.replace_feature(relu(features))


class ToDense(SparseModule):
    """SparseTensor -> dense ``[B, C, *spatial]``."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return x.dense()


class SparseIdentity(SparseModule):
    def forward(self, x):
        return x


class SparseReLU(SparseModule):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feature(torch.relu_(x.features) if self.inplace else torch.relu(x.features))
