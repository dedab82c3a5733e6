"""Python face of the native kernels.

Every op is a ``torch.library`` custom op ``sparsevision::<name>`` with a
fake implementation (``torch.compile`` traces it) and autograd where it has a
gradient; :mod:`sparsevision.ops.reference` holds its pure-PyTorch definition.
"""
from .batch_norm import batch_norm_rows
from .indexed_attention import indexed_attention
from .kernel_map import build_kernel_map, downsample_indices, invert_kernel_map, submanifold_kernel_map
from .library import EXTENSION, ExtensionInfo
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
from .recycled_buffers import cached_buffer_bytes, release_cached_buffers, set_buffer_cache_limit
from .site_validation import check_indices
from .sparse_conv import sparse_conv, transpose_weight
from .spike_conv import spike_sparse_conv
from .token_routing import gather_tokens, merge_tokens, scatter_tokens, select_tokens, unmerge_tokens


def extension_info() -> ExtensionInfo:
    """What the native extension provides here (CPU kernels, CUDA kernels)."""
    return EXTENSION


__all__ = ['ExtensionInfo', 'batch_norm_rows', 'build_kernel_map', 'cached_buffer_bytes', 'check_indices',
           'downsample_indices', 'extension_info', 'gather_tokens', 'indexed_attention', 'invert_kernel_map',
           'merge_tokens', 'na1d', 'na2d', 'na3d', 'neighborhood_attention', 'release_cached_buffers',
           'scatter_tokens', 'select_tokens', 'set_buffer_cache_limit', 'sparse_conv', 'spike_sparse_conv',
           'submanifold_kernel_map', 'transpose_weight', 'unmerge_tokens']
