"""Compatibility shims for mmengine 0.10.7 on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6
that means ``weights_only=True``, and resuming a Runner checkpoint fails on the
objects mmengine pickles into it. Rather than disabling the check we allow
exactly those objects.
"""
import functools

import numpy as np
import torch


@functools.cache
def register_checkpoint_safe_globals() -> None:
    """Allow the non-tensor objects of an mmengine Runner checkpoint in ``weights_only`` loads."""
    from mmengine.logging import HistoryBuffer

    numpy_multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = {type(np.dtype(name)) for name in
                     ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                      'float16', 'float32', 'float64')}
    torch.serialization.add_safe_globals([
        HistoryBuffer, numpy_multiarray._reconstruct, numpy_multiarray.scalar, np.ndarray, np.dtype,
        *dtype_classes, slice, getattr])
