"""Python face of the native kernels.

Every op is a ``torch.library`` custom op ``sparsevision::<name>`` with a
fake implementation (``torch.compile`` traces it) and autograd where it has a
gradient; :mod:`sparsevision.ops.reference` holds its pure-PyTorch definition.
"""
from .library import EXTENSION, ExtensionInfo
from .token_routing import gather_tokens, scatter_tokens


def extension_info() -> ExtensionInfo:
    """What the native extension provides here (CPU kernels, CUDA kernels)."""
    return EXTENSION


__all__ = ['ExtensionInfo', 'extension_info', 'gather_tokens', 'scatter_tokens']
