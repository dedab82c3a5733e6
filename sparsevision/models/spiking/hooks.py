"""Forward hooks on chosen layers for as long as a context is active: the shared part of the monitors."""
from functools import partial
from typing import Dict, List, Tuple

import torch
from torch import nn


class LayerHooks:
    """Select every layer of some types in ``model``; while entered, call :meth:`record` after each one runs.

    Readings live on the instance (``totals``), never in module-global state,
    and keep accumulating if the context is entered again.

    Args:
        model: the module to watch (or one such layer itself).
        layer_types: the layer classes to hook.
        description: what those layers are, for the error when ``model`` has none.
    """

    def __init__(self, model: nn.Module, layer_types: Tuple[type, ...], description: str):
        self.layers = {name or type(module).__name__: module for name, module in model.named_modules()
                       if isinstance(module, layer_types)}
        if not self.layers:
            raise ValueError(f'{type(model).__name__} contains no {description}')
        self.totals: Dict[str, Dict[str, torch.Tensor]] = {}
        self.handles: List[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self):
        if self.handles:
            raise RuntimeError(f'this {type(self).__name__} is already active; it cannot be entered twice at once')
        self.handles = [module.register_forward_hook(partial(self.record, name), with_kwargs=True)
                        for name, module in self.layers.items()]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def record(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        """Forward hook of layer ``name``: add this call's readings to ``totals``."""
        raise NotImplementedError
