"""What every Triton kernel launch of ``ops/gpu`` needs: the tensors' device made current, arguments checked."""
import contextlib

import torch


def on_device_of(tensor: torch.Tensor):
    """Context making ``tensor``'s CUDA device current (Triton launches there); no-op for CPU tensors (the Triton
    interpreter runs kernels on them)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    """Raises ValueError unless all given tensors (``None`` skipped) are on one device."""
    devices = {name: tensor.device for name, tensor in tensors.items() if tensor is not None}
    if len(set(devices.values())) > 1:
        listed = ', '.join(f'{name} on {device}' for name, device in devices.items())
        raise ValueError(f'{op}: all tensors must be on one device, got {listed}')
