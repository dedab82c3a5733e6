"""Settings the Triton convolution kernels share: tile sizes, fp32 precision, launch options."""
import torch
import triton

NUM_WARPS = 4
NUM_STAGES = 2


def block_size(channels: int, smallest: int, largest: int) -> int:
    """The power of two that covers ``channels``, within ``[smallest, largest]`` (``tl.dot`` needs at least 16)."""
    return min(max(triton.next_power_of_2(max(channels, 1)), smallest), largest)


def input_precision(dtype: torch.dtype) -> str:
    """How ``tl.dot`` multiplies fp32 operands: exactly (``'ieee'``), or as TF32 when
    ``torch.backends.cuda.matmul.allow_tf32`` is on, as for PyTorch's own fp32 matmuls. fp16/bf16 are exact either
    way (their products fit fp32)."""
    return 'tf32' if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else 'ieee'


def widen_operands(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` gets its bf16 operands widened to fp32 (exact: the products are the same).

    Only in the Triton interpreter (CPU tests), whose bf16 ``tl.dot`` gives wrong results (Triton 3.8); GPU
    builds multiply bf16 on tensor cores.
    """
    return dtype == torch.bfloat16 and triton.knobs.runtime.interpret


def exact_fp32_dot(dtype: torch.dtype, precision: str) -> bool:
    """Whether ``tl.dot`` multiplies exact fp32 (FMA units, no tensor cores): such kernels need smaller tiles to stay
    in registers (the AOT test checks that no kernel spills)."""
    return dtype == torch.float32 and precision == 'ieee'
