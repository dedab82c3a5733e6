"""The schemas of the ``sparsevision`` ops, and their fingerprint.

Plain data, importable without torch: ``setup.py`` compiles the fingerprint into ``sparsevision._C``, and
:mod:`sparsevision.ops.library` registers the extension's kernels only when the two agree. An extension built
before a schema changed (a stale build) is then reported and left unused, instead of aborting the process, which is
what registering a kernel against a changed schema does.
"""
import hashlib

SCHEMAS = {
    'gather_tokens': 'gather_tokens(Tensor tokens, Tensor index) -> Tensor',
    'scatter_tokens': 'scatter_tokens(Tensor tokens, Tensor index, SymInt num_tokens) -> Tensor',
    'merge_tokens': ('merge_tokens(Tensor tokens, Tensor sizes, Tensor index, SymInt num_out) '
                     '-> (Tensor merged, Tensor merged_sizes)'),
    'select_tokens': 'select_tokens(Tensor scores, int keep, int num_prefix) -> Tensor',
    'kernel_map': ('kernel_map(Tensor in_indices, Tensor out_indices, int[] spatial_shape, int[] kernel_size, '
                   'int[] stride, int[] padding, int[] dilation, bool sites_checked=False) -> Tensor'),
    'downsample_indices': ('downsample_indices(Tensor indices, int[] spatial_shape, int[] kernel_size, '
                           'int[] stride, int[] padding, int[] dilation, bool sites_checked=False) -> Tensor'),
    'invert_kernel_map': 'invert_kernel_map(Tensor neighbors, SymInt num_inputs, bool map_checked=False) -> Tensor',
    'sparse_conv': ('sparse_conv(Tensor features, Tensor weight, Tensor neighbors, Tensor inverse_neighbors, '
                    'int groups) -> Tensor'),
    'sparse_conv_weight_grad': ('sparse_conv_weight_grad(Tensor features, Tensor grad_output, Tensor neighbors, '
                                'Tensor inverse_neighbors, int groups) -> Tensor'),
    'gather_gemm_conv': ('gather_gemm_conv(Tensor features, Tensor weight, Tensor neighbors, Tensor inverse_neighbors, '
                         'int groups) -> Tensor'),
    'gather_gemm_conv_weight_grad': ('gather_gemm_conv_weight_grad(Tensor features, Tensor grad_output, '
                                     'Tensor neighbors, Tensor inverse_neighbors, int groups) -> Tensor'),
    'spike_sparse_conv': ('spike_sparse_conv(Tensor spikes, Tensor weight, Tensor neighbors, '
                          'Tensor inverse_neighbors) -> Tensor'),
    'indexed_attention': ('indexed_attention(Tensor query, Tensor key, Tensor value, Tensor index, Tensor? bias, '
                          'float scale) -> (Tensor out, Tensor lse)'),
    'indexed_attention_backward': ('indexed_attention_backward(Tensor grad_out, Tensor query, Tensor key, '
                                   'Tensor value, Tensor index, Tensor? bias, Tensor out, Tensor lse, float scale) '
                                   '-> (Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_bias)'),
    'row_batch_norm': ('row_batch_norm(Tensor rows, Tensor? weight, Tensor? bias, float eps, bool relu=False, '
                       'Tensor? residual=None) -> (Tensor out, Tensor mean, Tensor var)'),
    'row_batch_norm_backward': ('row_batch_norm_backward(Tensor grad_out, Tensor rows, Tensor mean, Tensor var, '
                                'Tensor? weight, float eps, Tensor? relu_out=None) -> (Tensor grad_rows, '
                                'Tensor grad_weight, Tensor grad_bias)'),
}


def fingerprint() -> str:
    """16 hex digits that change whenever an op's name or schema does."""
    text = '\n'.join(f'{name}: {SCHEMAS[name]}' for name in sorted(SCHEMAS))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
