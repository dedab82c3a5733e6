"""Recycled CPU output buffers of the native kernels.

glibc hands back to the operating system every allocation over 32 MiB as soon as it is freed, so each large
activation of a training step is page-faulted in again, 4 KiB at a time, on every call (about 20 ms for 115k sites x
96 float32 channels). The CPU kernels of ``sparse_conv`` and the row batch norm therefore keep output buffers of at
least 8 MiB when their tensors die and give them to the next output that fits (``csrc/cpu/recycled_buffers.cpp``).

Idle buffers are capped at ``SPARSEVISION_BUFFER_CACHE_MB`` MiB (default 1024; ``0`` turns recycling off), or at
what :func:`set_buffer_cache_limit` sets; a buffer given back to a full cache frees those idle the longest, so the
cache follows the current workload (after a float64 run or a larger scene). :func:`release_cached_buffers` frees
them all. Without the native extension these do nothing.
"""
import importlib
import os
import warnings

from .library import EXTENSION

ENVIRONMENT_VARIABLE = 'SPARSEVISION_BUFFER_CACHE_MB'
DEFAULT_LIMIT_MB = 1024
_MEBIBYTE = 1 << 20
_native = importlib.import_module('sparsevision._C') if EXTENSION.loaded else None


def set_buffer_cache_limit(megabytes: int) -> int:
    """Keeps at most ``megabytes`` MiB of idle buffers (0: no recycling), the oldest freed first; returns the old cap.

    Raises:
        ValueError: if ``megabytes`` is not a whole number >= 0.
    """
    if isinstance(megabytes, bool) or not isinstance(megabytes, int) or megabytes < 0:
        raise ValueError(f'the buffer cache limit must be a whole number of MiB >= 0, got {megabytes!r}')
    if _native is None:
        return 0
    return _native.set_recycled_limit(megabytes * _MEBIBYTE) // _MEBIBYTE


def release_cached_buffers() -> int:
    """Frees every idle buffer now; returns the bytes freed."""
    return 0 if _native is None else _native.release_recycled_buffers()


def cached_buffer_bytes() -> int:
    """Bytes held by idle buffers."""
    return 0 if _native is None else _native.idle_recycled_bytes()


def _limit_from_environment() -> int:
    value = os.environ.get(ENVIRONMENT_VARIABLE, '').strip()
    if not value:
        return DEFAULT_LIMIT_MB
    if value.isdigit():
        return int(value)
    warnings.warn(f'{ENVIRONMENT_VARIABLE}={value!r} is not a whole number of MiB >= 0; keeping the default '
                  f'{DEFAULT_LIMIT_MB} MiB of recycled buffers (set it to 0 to turn recycling off).',
                  RuntimeWarning, stacklevel=2)
    return DEFAULT_LIMIT_MB


set_buffer_cache_limit(_limit_from_environment())
