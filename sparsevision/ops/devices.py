"""One device per op call: the check every op entry point makes before it touches data."""
from typing import Optional

import torch


def check_same_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Raises ``ValueError`` unless every named tensor sits on the first one's device (``None``: an absent optional
    argument, skipped).

    The dispatcher runs an op's CUDA kernel when any argument is on CUDA, so a CPU kernel map beside CUDA features
    would otherwise reach a CUDA kernel.
    """
    (first_name, first), *others = ((name, tensor) for name, tensor in tensors.items() if tensor is not None)
    for name, tensor in others:
        if tensor.device != first.device:
            raise ValueError(f'{op}: {name} is on {tensor.device} but {first_name} is on {first.device}; move every '
                             f'argument to one device (e.g. {name}.to({first_name}.device))')
