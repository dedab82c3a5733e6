"""Recycled CPU output buffers: large outputs reuse freed buffers, results stay right, the cap and release work."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

import sparsevision.ops as ops
from sparsevision.ops import reference

pytestmark = pytest.mark.skipif(not ops.extension_info().cpu_kernels, reason='needs the native extension')

ROWS, CHANNELS = 100_000, 32    # 12.8 MB of float32: over the 8 MiB recycling threshold


def identity_case(rows=ROWS, channels=CHANNELS):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(rows, channels, generator=generator)
    weight = torch.randn(1, channels, channels, generator=generator)
    neighbors = torch.arange(rows, dtype=torch.int32).unsqueeze(1)
    return features, weight, neighbors, ops.invert_kernel_map(neighbors, rows)


def large_outputs():
    """Each native op that recycles: name -> a call returning a fresh large output."""
    features, weight, neighbors, inverse = identity_case()
    out, mean, var = ops.batch_norm_rows(features, None, None, 1e-5)
    grad = torch.randn_like(features)
    return {
        'sparse_conv': lambda: ops.sparse_conv(features, weight, neighbors, inverse, 1),
        'row_batch_norm': lambda: torch.ops.sparsevision.row_batch_norm(features, None, None, 1e-5)[0],
        'row_batch_norm_backward':
            lambda: torch.ops.sparsevision.row_batch_norm_backward(grad, features, mean, var, None, 1e-5)[0],
    }


@pytest.fixture(autouse=True)
def empty_cache():
    ops.release_cached_buffers()
    yield
    ops.release_cached_buffers()


@pytest.mark.parametrize('op', ['sparse_conv', 'row_batch_norm', 'row_batch_norm_backward'])
def test_a_freed_large_output_is_reused_and_fully_rewritten(op):
    make = large_outputs()[op]
    first = make()
    expected, address = first.clone(), first.data_ptr()
    first.fill_(float('nan'))   # a recycled buffer's old contents must not leak into the next result
    del first
    assert ops.cached_buffer_bytes() == ROWS * CHANNELS * 4
    second = make()
    assert second.data_ptr() == address and ops.cached_buffer_bytes() == 0
    assert torch.equal(second, expected)


def test_recycled_output_is_right():
    features, weight, neighbors, inverse = identity_case()
    expected = reference.sparse_conv(features, weight, neighbors, inverse, 1)
    for _ in range(3):
        torch.testing.assert_close(ops.sparse_conv(features, weight, neighbors, inverse, 1), expected)


def test_small_outputs_are_not_kept():
    out = ops.sparse_conv(*identity_case(rows=1000), 1)   # 128 KB
    del out
    assert ops.cached_buffer_bytes() == 0


def test_a_recycled_output_behaves_like_any_tensor():
    features, weight, neighbors, inverse = identity_case()
    out = ops.sparse_conv(features, weight, neighbors, inverse, 1)
    expected = out.clone()
    assert torch.equal(pickle.loads(pickle.dumps(out)), expected)
    out.resize_(2 * ROWS, CHANNELS)   # grows into a new allocation, giving the buffer back
    assert torch.equal(out[:ROWS], expected) and ops.cached_buffer_bytes() == ROWS * CHANNELS * 4
    shared = ops.sparse_conv(features, weight, neighbors, inverse, 1).share_memory_()
    assert shared.is_shared() and torch.equal(shared, expected)


def test_limit_and_release():
    features, weight, neighbors, inverse = identity_case()
    outputs = [ops.sparse_conv(features, weight, neighbors, inverse, 1) for _ in range(3)]
    previous = ops.set_buffer_cache_limit(30)   # MiB: room for two 12.8 MB buffers, not three
    try:
        del outputs
        assert ops.cached_buffer_bytes() == 2 * ROWS * CHANNELS * 4
        assert ops.set_buffer_cache_limit(20) == 30 and ops.cached_buffer_bytes() == ROWS * CHANNELS * 4
        assert ops.release_cached_buffers() == ROWS * CHANNELS * 4 and ops.cached_buffer_bytes() == 0
        ops.set_buffer_cache_limit(0)
        del features
        out = ops.sparse_conv(torch.randn(ROWS, CHANNELS), weight, neighbors, inverse, 1)
        del out
        assert ops.cached_buffer_bytes() == 0
    finally:
        ops.set_buffer_cache_limit(previous)


def test_a_full_cache_frees_the_buffers_idle_longest():
    """After a float64 run fills the cache, float32 buffers still get kept (and reused): the old sizes make room."""
    features, weight, neighbors, inverse = identity_case()
    previous = ops.set_buffer_cache_limit(60)   # MiB: two 25.6 MB float64 buffers fill it
    try:
        stale = [ops.sparse_conv(features.double(), weight.double(), neighbors, inverse, 1) for _ in range(2)]
        stale_addresses = {tensor.data_ptr() for tensor in stale}
        del stale
        assert ops.cached_buffer_bytes() == 2 * ROWS * CHANNELS * 8
        outputs = [ops.sparse_conv(features, weight, neighbors, inverse, 1) for _ in range(2)]
        addresses = {tensor.data_ptr() for tensor in outputs}
        assert not addresses & stale_addresses   # float64 buffers are twice too large to serve float32 outputs
        del outputs   # the second float32 buffer needs room: the first float64 buffer (idle longest) goes
        assert ops.cached_buffer_bytes() == ROWS * CHANNELS * 8 + 2 * ROWS * CHANNELS * 4
        again = [ops.sparse_conv(features, weight, neighbors, inverse, 1) for _ in range(2)]
        assert {tensor.data_ptr() for tensor in again} == addresses
        del again
        assert ops.set_buffer_cache_limit(30) == 60   # shrinking frees the oldest idle buffer: the float64 one
        assert ops.cached_buffer_bytes() == 2 * ROWS * CHANNELS * 4
    finally:
        ops.set_buffer_cache_limit(previous)


@pytest.mark.parametrize('limit', [-1, 1.5, True, '8'])
def test_bad_limit_is_rejected(limit):
    with pytest.raises(ValueError, match='whole number of MiB'):
        ops.set_buffer_cache_limit(limit)


@pytest.mark.parametrize('value, idle, warning', [('0', 0, False), ('lots', ROWS * CHANNELS * 4, True)])
def test_environment_variable(value, idle, warning):
    script = ('import warnings, torch\n'
              'with warnings.catch_warnings(record=True) as caught:\n'
              '    warnings.simplefilter("always")\n'
              '    import sparsevision.ops as ops\n'
              f'neighbors = torch.arange({ROWS}, dtype=torch.int32).unsqueeze(1)\n'
              f'out = ops.sparse_conv(torch.randn({ROWS}, {CHANNELS}), torch.randn(1, {CHANNELS}, {CHANNELS}), '
              f'neighbors, neighbors, 1)\n'
              'del out\n'
              'warned = any("SPARSEVISION_BUFFER_CACHE_MB" in str(w.message) for w in caught)\n'
              'print(ops.cached_buffer_bytes(), warned)\n')
    environment = dict(os.environ, SPARSEVISION_BUFFER_CACHE_MB=value)
    result = subprocess.run([sys.executable, '-c', script], env=environment, capture_output=True, text=True,
                            check=True)
    assert result.stdout.split()[-2:] == [str(idle), str(warning)]
