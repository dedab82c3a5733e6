"""Containers and small modules with spconv's names."""
from collections import OrderedDict

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
        for module in self._modules.values():
            if isinstance(module, SparseModule) or not isinstance(x, SparseTensor):
                x = module(x)
            else:
                x = x.replace_feature(module(x.features))
        return x


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
