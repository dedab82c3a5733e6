"""What every Triton kernel launch of ``ops/gpu`` needs: the tensors' device made current."""
import contextlib

import torch


def on_device_of(tensor: torch.Tensor):
    """Context making ``tensor``'s CUDA device current (Triton launches there); no-op for CPU tensors (the Triton
    interpreter runs kernels on them)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
