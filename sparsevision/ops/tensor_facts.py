"""What was once checked about a tensor's values, remembered so that a GPU op need not read them back again.

Checking values on the GPU costs a device-to-host copy, which stalls the launch queue and is illegal during
CUDA-graph capture. A fact is recorded once and remembered by the tensor's identity and version: a weak reference,
so a freed tensor is forgotten, and the version counter, so an in-place edit drops the fact. Two edits go unnoticed:
one through ``.data``, which bypasses the version counter, and one to a tensor made under ``torch.inference_mode``,
which keeps no counter. The kernels that rely on a fact stay memory-safe when it is wrong (they skip what is out of
range), so such an edit gives wrong results, never an out-of-bounds access.
"""
import weakref
from typing import Any, Dict, Optional, Tuple

import torch


def _version(tensor: torch.Tensor) -> Optional[int]:
    return None if tensor.is_inference() else tensor._version   # inference tensors keep no version counter


class TensorFacts:
    """One kind of fact per instance, e.g. ``facts.record(neighbors, bound)`` and ``facts.get(neighbors)``."""

    def __init__(self):
        self._facts: Dict[int, Tuple[weakref.ref, Optional[int], Any]] = {}

    def __len__(self) -> int:
        return len(self._facts)

    def record(self, tensor: torch.Tensor, fact: Any) -> None:
        """Remembers ``fact`` about ``tensor`` as it is now (not while ``torch.compile`` traces)."""
        if torch.compiler.is_compiling():
            return
        key = id(tensor)

        def forget(reference, key=key):
            if key in self._facts and self._facts[key][0] is reference:
                del self._facts[key]

        self._facts[key] = (weakref.ref(tensor, forget), _version(tensor), fact)

    def get(self, tensor: torch.Tensor) -> Any:
        """The fact recorded about ``tensor`` if it is unchanged since, else None."""
        known = self._facts.get(id(tensor))
        if known is None or known[0]() is not tensor or known[1] != _version(tensor):
            return None
        return known[2]
