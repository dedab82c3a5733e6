"""Counting, at the dispatcher, the ops that make the host wait for the device.

CUDA-graph capture forbids such waits, and each one stalls the launch queue. The count works on any device: on CPU
tensors nothing waits, but the same Python code issues the same ops, so a CPU run shows where a GPU run would wait.
It sees the ops called from Python, not those inside a native kernel.
"""
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result the host must read back: scalar reads and data-dependent output shapes.
SYNCING_OPS = frozenset({'aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select',
                         'aten::unique_consecutive', 'aten::_unique', 'aten::_unique2', 'aten::unique_dim',
                         'aten::equal', 'aten::is_nonzero'})
COPY_OPS = frozenset({'aten::_to_copy', 'aten::copy_'})


class HostSyncs(TorchDispatchMode):
    """Within ``with HostSyncs() as syncs:``, ``syncs.seen`` lists the waiting ops in call order (copies from a
    device to the host included) and ``syncs.ops`` counts every dispatched op."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = func._schema.name
        self.ops[name] += 1
        if name in SYNCING_OPS or name in COPY_OPS and _copies_to_host(args, result):
            self.seen.append(name)
        return result


def _copies_to_host(args, result) -> bool:
    sources = [arg for arg in args if isinstance(arg, torch.Tensor)]
    return (isinstance(result, torch.Tensor) and result.device.type == 'cpu'
            and any(source.device.type != 'cpu' for source in sources))
