"""Settings the Triton convolution kernels share: tile sizes, fp32 precision, launch options."""
import os

import torch
import triton

NUM_WARPS = 4
NUM_STAGES = 2


def block_size(channels: int, smallest: int, largest: int) -> int:
    """The power of two that covers ``channels``, within ``[smallest, largest]`` (``tl.dot`` needs at least 16)."""
    return min(max(triton.next_power_of_2(max(channels, 1)), smallest), largest)


def input_precision(dtype: torch.dtype) -> str:
    """How ``tl.dot`` multiplies fp32 operands: exactly (``'ieee'``), or as TF32 where PyTorch's own fp32 matmuls
    may use it (``torch.backends.cuda.matmul.allow_tf32 = True``, ``fp32_precision = 'tf32'`` or
    ``torch.set_float32_matmul_precision('high')``). fp16/bf16 products are exact either way (they fit fp32)."""
    return 'tf32' if dtype == torch.float32 and tf32_allowed() else 'ieee'


def tf32_allowed() -> bool:
    """Whether PyTorch lets fp32 matmuls on CUDA use TF32.

    Read through ``fp32_precision``, which both of PyTorch's APIs set (reading ``allow_tf32`` raises once the newer
    API has been used); torch before 2.9 has only ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, 'fp32_precision'):
        return matmul.allow_tf32
    precision = matmul.fp32_precision
    if precision == 'none':   # inherits the global setting
        precision = torch.backends.fp32_precision
    return precision == 'tf32'


def widen_operands(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` gets its bf16 operands widened to fp32 (exact: the products are the same).

    Only in the Triton interpreter (CPU tests), whose bf16 ``tl.dot`` gives wrong results (Triton 3.8); GPU
    builds multiply bf16 on tensor cores.
    """
    return dtype == torch.bfloat16 and interpreting()


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``triton.knobs`` from Triton 3.4, the environment before)."""
    knobs = getattr(triton, 'knobs', None)
    return knobs.runtime.interpret if knobs is not None else os.environ.get('TRITON_INTERPRET') == '1'


def exact_fp32_dot(dtype: torch.dtype, precision: str) -> bool:
    """Whether ``tl.dot`` multiplies exact fp32 (FMA units, no tensor cores): such kernels need smaller tiles to stay
    in registers (the AOT test checks that no kernel spills)."""
    return dtype == torch.float32 and precision == 'ieee'
