"""Counting host syncs at the dispatcher: the ops that make the host wait for the device.

On CPU tensors nothing waits, but the same Python code path issues the same ops, so a test here shows what a GPU run
would sync on (and what would break CUDA-graph capture).
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = {'aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select', 'aten::unique_consecutive',
               'aten::_unique', 'aten::_unique2', 'aten::unique_dim', 'aten::equal', 'aten::is_nonzero'}


class HostSyncs(TorchDispatchMode):
    """Records the ops that wait for the device: scalar reads, data-dependent shapes, copies to the host."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = func._schema.name
        to_host = (name in ('aten::_to_copy', 'aten::copy_') and isinstance(result, torch.Tensor)
                   and result.device.type == 'cpu' and args[-1 if name == 'aten::copy_' else 0].device.type != 'cpu')
        if name in SYNCING_OPS or to_host:
            self.seen.append(name)
        return result
