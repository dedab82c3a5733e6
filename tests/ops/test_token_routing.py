"""Tests of ``sparsevision.ops.gather_tokens`` and ``sparsevision.ops.scatter_tokens``.

The native kernels are checked against the pure-PyTorch references in
:mod:`sparsevision.ops.reference`: bitwise in float32 and float64 (both add the
rows of a scatter in index order), bitwise against a float32 computation rounded
once in float16 and bfloat16. Then edge cases, argument errors, autograd,
``torch.library.opcheck``, determinism across thread counts, ``torch.compile``,
the reference fallback and, where a GPU is present, the CUDA kernels.
"""
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsevision.ops import extension_info, gather_tokens, scatter_tokens
from sparsevision.ops import reference

GATHER_OP = torch.ops.sparsevision.gather_tokens.default
SCATTER_OP = torch.ops.sparsevision.scatter_tokens.default
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCED_DTYPES = (torch.float16, torch.bfloat16)

requires_native = pytest.mark.skipif(not extension_info().loaded, reason='sparsevision._C is not built')
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
requires_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and extension_info().cuda_kernels),
                                           reason='CUDA or the CUDA kernels of sparsevision._C are not available')


def make_inputs(batch, num_tokens, count, channels, dtype=torch.float32, distinct_rows=None, seed=0, device='cpu'):
    """Random ``tokens [B, N, C]``, ``rows [B, K, C]`` and ``index [B, K]``.

    ``index`` draws from the first ``distinct_rows`` rows (all ``N`` by default),
    so a small value forces many duplicates.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num_tokens, channels, generator=generator, dtype=torch.float64).to(device, dtype)
    rows = torch.randn(batch, count, channels, generator=generator, dtype=torch.float64).to(device, dtype)
    high = num_tokens if distinct_rows is None else distinct_rows
    index = torch.randint(0, max(high, 1), (batch, count), generator=generator).to(device)
    return tokens, rows, index


@st.composite
def routing_shapes(draw):
    """``(B, N, K, C, distinct_rows, seed)`` with K up to 60 > N and C often across the 64-channel block boundary."""
    num_tokens = draw(st.integers(1, 50))
    channels = draw(st.integers(0, 70) | st.integers(60, 70))
    return (draw(st.integers(0, 4)), num_tokens, draw(st.integers(0, 60)), channels, draw(st.integers(1, num_tokens)),
            draw(st.integers(0, 2**31 - 1)))


HYPOTHESIS_EXAMPLES = [(4, 50, 60, 70, 50, 0), (2, 5, 60, 65, 2, 1), (3, 33, 20, 64, 1, 2)]


def with_examples(test):
    """Always run the hand-picked shapes too: K > N, heavy duplicates, C on and across a 64-channel block."""
    for shape in HYPOTHESIS_EXAMPLES:
        test = example(shape=shape)(test)
    return test


def expected_gather(tokens, index):
    """Reference gather; reduced precision goes through float32 (a copy, so exact either way)."""
    if tokens.dtype in REDUCED_DTYPES:
        return reference.gather_tokens(tokens.float(), index).to(tokens.dtype)
    return reference.gather_tokens(tokens, index)


def expected_scatter(rows, index, num_tokens):
    """Reference scatter; reduced precision sums in float32 and rounds once, like the kernels."""
    if rows.dtype in REDUCED_DTYPES:
        return reference.scatter_tokens(rows.float(), index, num_tokens).to(rows.dtype)
    return reference.scatter_tokens(rows, index, num_tokens)


def assert_bitwise_equal(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), f'max abs diff {(actual.double() - expected.double()).abs().max().item()}'


@pytest.mark.parametrize('dtype', ALL_DTYPES, ids=str)
@settings(max_examples=40, deadline=None)
@given(shape=routing_shapes())
@with_examples
def test_gather_matches_reference(dtype, shape):
    batch, num_tokens, count, channels, distinct_rows, seed = shape
    tokens, _, index = make_inputs(batch, num_tokens, count, channels, dtype, distinct_rows, seed)
    assert_bitwise_equal(gather_tokens(tokens, index), expected_gather(tokens, index))


@pytest.mark.parametrize('dtype', ALL_DTYPES, ids=str)
@settings(max_examples=40, deadline=None)
@given(shape=routing_shapes())
@with_examples
def test_scatter_matches_reference(dtype, shape):
    batch, num_tokens, count, channels, distinct_rows, seed = shape
    _, rows, index = make_inputs(batch, num_tokens, count, channels, dtype, distinct_rows, seed)
    out = scatter_tokens(rows, index, num_tokens)
    assert_bitwise_equal(out, expected_scatter(rows, index, num_tokens))
    if dtype in REDUCED_DTYPES:
        exact = reference.scatter_tokens(rows.double(), index, num_tokens)
        tolerance = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(out.double(), exact, rtol=tolerance, atol=tolerance)


@settings(max_examples=30, deadline=None)
@given(shape=routing_shapes())
@with_examples
def test_scatter_is_adjoint_of_gather(shape):
    batch, num_tokens, count, channels, distinct_rows, seed = shape
    tokens, rows, index = make_inputs(batch, num_tokens, count, channels, torch.float64, distinct_rows, seed)
    left = (gather_tokens(tokens, index) * rows).sum()
    right = (tokens * scatter_tokens(rows, index, num_tokens)).sum()
    torch.testing.assert_close(left, right, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('batch, num_tokens, count, channels, distinct_rows', [
    pytest.param(2, 7, 0, 5, None, id='no kept tokens'),
    pytest.param(2, 0, 0, 5, None, id='no tokens at all'),
    pytest.param(0, 7, 3, 5, None, id='empty batch'),
    pytest.param(3, 7, 4, 0, None, id='no channels'),
    pytest.param(3, 9, 200, 67, 1, id='all indices equal'),
    pytest.param(1, 1, 1, 1, None, id='single token'),
    pytest.param(1, 197, 138, 384, None, id='batch 1 vit'),
    pytest.param(512, 12, 9, 16, None, id='512 batches'),
    pytest.param(2, 3, 5, 2**17 + 3, None, id='huge channel count'),
])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_edge_shapes(batch, num_tokens, count, channels, distinct_rows, dtype):
    tokens, rows, index = make_inputs(batch, num_tokens, count, channels, dtype, distinct_rows)
    assert_bitwise_equal(gather_tokens(tokens, index), expected_gather(tokens, index))
    assert_bitwise_equal(scatter_tokens(rows, index, num_tokens), expected_scatter(rows, index, num_tokens))


def test_scatter_to_more_rows_than_referenced():
    rows = torch.ones(2, 3, 4)
    index = torch.tensor([[0, 0, 0], [5, 1, 5]])
    out = scatter_tokens(rows, index, 9)
    expected = torch.zeros(2, 9, 4)
    expected[0, 0] = 3
    expected[1, 5] = 2
    expected[1, 1] = 1
    assert_bitwise_equal(out, expected)


@pytest.mark.parametrize('layout', ['transposed', 'channel slice', 'token slice', 'expanded batch'])
def test_non_contiguous_inputs(layout):
    generator = torch.Generator().manual_seed(1)
    if layout == 'transposed':
        tokens = torch.randn(70, 20, 3, generator=generator).permute(2, 1, 0)
        rows = torch.randn(70, 25, 3, generator=generator).permute(2, 1, 0)
        index = torch.randint(0, 20, (25, 3), generator=generator).t()
    elif layout == 'channel slice':
        tokens = torch.randn(3, 20, 140, generator=generator)[..., ::2]
        rows = torch.randn(3, 25, 141, generator=generator)[..., 1:71]
        index = torch.randint(0, 20, (3, 50), generator=generator)[:, ::2]
    elif layout == 'token slice':
        tokens = torch.randn(3, 40, 70, generator=generator)[:, 5:25]
        rows = torch.randn(3, 50, 70, generator=generator)[:, ::2]
        index = torch.randint(0, 20, (6, 25), generator=generator)[1::2]
    else:
        tokens = torch.randn(1, 20, 70, generator=generator).expand(3, -1, -1)
        rows = torch.randn(1, 25, 70, generator=generator).expand(3, -1, -1)
        index = torch.randint(0, 20, (1, 25), generator=generator).expand(3, -1)
    assert not (tokens.is_contiguous() or rows.is_contiguous() or index.is_contiguous())
    assert_bitwise_equal(gather_tokens(tokens, index), reference.gather_tokens(tokens, index))
    assert_bitwise_equal(scatter_tokens(rows, index, 20), reference.scatter_tokens(rows, index, 20))


@pytest.mark.parametrize('call, message', [
    (lambda: gather_tokens(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.int32)), 'int64'),
    (lambda: scatter_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.int32), 5), 'int64'),
    (lambda: gather_tokens(torch.zeros(2, 5, 3), torch.tensor([[0, 5], [1, 2]])), r'\[0, 5\).*\[0, 5\]'),
    (lambda: gather_tokens(torch.zeros(2, 5, 3), torch.tensor([[0, -1], [1, 2]])), r'\[0, 5\).*\[-1, 2\]'),
    (lambda: scatter_tokens(torch.zeros(1, 2, 3), torch.tensor([[0, 7]]), 7), r'\[0, 7\).*\[0, 7\]'),
    (lambda: scatter_tokens(torch.zeros(1, 2, 3), torch.tensor([[-3, 0]]), 7), r'\[0, 7\).*\[-3, 0\]'),
    (lambda: gather_tokens(torch.zeros(1, 0, 3), torch.tensor([[0]])), r'\[0, 0\)'),
    (lambda: gather_tokens(torch.zeros(5, 3), torch.zeros(1, 2, dtype=torch.long)), 'tokens must be'),
    (lambda: gather_tokens(torch.zeros(1, 5, 3, 1), torch.zeros(1, 2, dtype=torch.long)), 'tokens must'),
    (lambda: gather_tokens(torch.zeros(1, 5, 3), torch.zeros(2, dtype=torch.long)), 'index must be'),
    (lambda: gather_tokens(torch.zeros(1, 5, 3), torch.zeros(1, 2, 1, dtype=torch.long)), 'index must'),
    (lambda: gather_tokens(torch.zeros(2, 5, 3), torch.zeros(3, 2, dtype=torch.long)), 'batch=2'),
    (lambda: gather_tokens(torch.zeros(1, 5, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)), 'floating'),
    (lambda: scatter_tokens(torch.zeros(1, 3, 2), torch.zeros(1, 4, dtype=torch.long), 5), '4 entries'),
    (lambda: scatter_tokens(torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.long), -1), '>= 0'),
], ids=['gather int32', 'scatter int32', 'gather index == N', 'gather negative', 'scatter index == N',
        'scatter negative', 'gather from no tokens', 'tokens 2d', 'tokens 4d', 'index 1d', 'index 3d',
        'batch mismatch', 'integer tokens', 'scatter count mismatch', 'negative num_tokens'])
def test_invalid_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@requires_native
@pytest.mark.parametrize('call, message', [
    (lambda: GATHER_OP(torch.zeros(2, 5, 3), torch.tensor([[0, 1], [5, 2]])), r'index 5 at position 2.*\[0, 5\)'),
    (lambda: SCATTER_OP(torch.zeros(1, 2, 3), torch.tensor([[0, -1]]), 4), r'index -1 at position 1.*\[0, 4\)'),
    (lambda: GATHER_OP(torch.zeros(2, 5, 3), torch.zeros(2, 2, dtype=torch.int32)), 'int64'),
    (lambda: SCATTER_OP(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), 4), '3 entries'),
], ids=['gather out of range', 'scatter negative', 'int32 index', 'count mismatch'])
def test_native_kernels_check_arguments_without_python_wrapper(call, message):
    with pytest.raises(ValueError, match=message):
        call()


INDEX_CASES = {
    'distinct': torch.tensor([[4, 0, 2], [1, 3, 0]]),
    'duplicates': torch.tensor([[0, 0, 3, 0], [2, 2, 2, 4]]),
    'more kept than tokens': torch.tensor([[1, 4, 4, 0, 2, 3, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]]),
    'none kept': torch.zeros(2, 0, dtype=torch.long),
}


@pytest.mark.parametrize('index', INDEX_CASES.values(), ids=INDEX_CASES.keys())
def test_gather_gradients(index):
    tokens = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gather_tokens, (tokens, index))
    assert torch.autograd.gradgradcheck(gather_tokens, (tokens, index))


@pytest.mark.parametrize('index', INDEX_CASES.values(), ids=INDEX_CASES.keys())
def test_scatter_gradients(index):
    rows = torch.randn(2, index.shape[1], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: scatter_tokens(x, index, 6), (rows,))
    assert torch.autograd.gradgradcheck(lambda x: scatter_tokens(x, index, 6), (rows,))


def test_gather_gradient_sums_duplicates():
    tokens = torch.zeros(1, 4, 2, requires_grad=True)
    gather_tokens(tokens, torch.tensor([[3, 1, 3, 3]])).sum().backward()
    assert_bitwise_equal(tokens.grad, torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 3.0]]]))


def opcheck_samples():
    """``(tokens, rows, index, num_tokens)`` covering duplicates, K > N, empty shapes and dtypes."""
    samples = []
    for batch, num_tokens, count, channels, distinct_rows, dtype in [
        (2, 7, 5, 3, None, torch.float32),
        (2, 7, 12, 70, 2, torch.float64),
        (1, 5, 6, 4, 1, torch.bfloat16),
        (2, 7, 0, 3, None, torch.float32),
        (0, 7, 3, 3, None, torch.float32),
        (2, 0, 0, 3, None, torch.float32),
    ]:
        tokens, rows, index = make_inputs(batch, num_tokens, count, channels, dtype, distinct_rows, seed=count)
        samples.append((tokens, rows, index, num_tokens))
    return samples


@pytest.mark.parametrize('requires_grad', [False, True])
def test_opcheck(requires_grad):
    for tokens, rows, index, num_tokens in opcheck_samples():
        torch.library.opcheck(GATHER_OP, (tokens.requires_grad_(requires_grad), index))
        torch.library.opcheck(SCATTER_OP, (rows.requires_grad_(requires_grad), index, num_tokens))


@requires_native
def test_scatter_is_deterministic_across_thread_counts():
    _, rows, index = make_inputs(4, 8, 4096, 256, torch.float32, distinct_rows=3, seed=3)
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_thread = scatter_tokens(rows, index, 8)
        torch.set_num_threads(2)
        two_threads = [scatter_tokens(rows, index, 8) for _ in range(3)]
    finally:
        torch.set_num_threads(previous_threads)
    for out in two_threads:
        assert_bitwise_equal(out, single_thread)
    assert_bitwise_equal(single_thread, reference.scatter_tokens(rows, index, 8))


def routed_residual(tokens, index):
    """Gather kept tokens, transform them, add them back: the token-pruning pattern."""
    kept = gather_tokens(tokens, index)
    return tokens + scatter_tokens(kept.tanh() * 2, index, tokens.shape[1])


@pytest.mark.parametrize('dynamic', [False, True], ids=['static', 'dynamic'])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(routed_residual, fullgraph=True, backend='aot_eager', dynamic=dynamic)
    for batch, num_tokens, count in [(2, 10, 14), (3, 12, 5)]:
        tokens, _, index = make_inputs(batch, num_tokens, count, 70, distinct_rows=6)
        eager_tokens = tokens.clone().requires_grad_()
        compiled_tokens = tokens.clone().requires_grad_()
        eager_out = routed_residual(eager_tokens, index)
        compiled_out = compiled(compiled_tokens, index)
        assert_bitwise_equal(compiled_out, eager_out)
        eager_out.square().sum().backward()
        compiled_out.square().sum().backward()
        assert_bitwise_equal(compiled_tokens.grad, eager_tokens.grad)


FALLBACK_SCRIPT = textwrap.dedent('''
    import sys
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import sparsevision.ops as ops
    runtime_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime_warnings) == 1, [str(w.message) for w in caught]
    assert 'SPARSEVISION_DISABLE_EXTENSION' in str(runtime_warnings[0].message)
    assert not ops.extension_info().loaded
    tokens, rows, index = torch.load(sys.argv[1])
    tokens.requires_grad_()
    gathered = ops.gather_tokens(tokens, index)
    gathered.square().sum().backward()
    torch.save((gathered.detach(), ops.scatter_tokens(rows, index, tokens.shape[1]), tokens.grad), sys.argv[2])
''')


def test_reference_fallback_matches_native(tmp_path, python_process):
    tokens, rows, index = make_inputs(3, 11, 17, 70, distinct_rows=4, seed=5)
    torch.save((tokens, rows, index), tmp_path / 'inputs.pt')
    result = python_process(['-c', FALLBACK_SCRIPT, tmp_path / 'inputs.pt', tmp_path / 'out.pt'],
                            env={'SPARSEVISION_DISABLE_EXTENSION': '1'}, timeout=120)
    assert result.returncode == 0, result.stderr
    fallback_gathered, fallback_scattered, fallback_grad = torch.load(tmp_path / 'out.pt')
    tokens.requires_grad_()
    gathered = gather_tokens(tokens, index)
    gathered.square().sum().backward()
    assert_bitwise_equal(fallback_gathered, gathered.detach())
    assert_bitwise_equal(fallback_scattered, scatter_tokens(rows, index, 11))
    assert_bitwise_equal(fallback_grad, tokens.grad)


@pytest.mark.parametrize('dtype', ALL_DTYPES, ids=str)
@pytest.mark.parametrize('batch, num_tokens, count, channels, distinct_rows', [
    (4, 50, 60, 70, None), (4, 50, 60, 70, 2), (1, 197, 138, 384, None), (512, 12, 9, 16, None),
    (2, 7, 0, 5, None), (0, 7, 3, 5, None), (3, 7, 4, 0, None),
])
def test_cuda_matches_reference(cuda_backend, dtype, batch, num_tokens, count, channels, distinct_rows):
    tokens, rows, index = make_inputs(batch, num_tokens, count, channels, dtype, distinct_rows)
    with cuda_backend:
        gathered = gather_tokens(cuda_backend.to(tokens), cuda_backend.to(index))
        scattered = scatter_tokens(cuda_backend.to(rows), cuda_backend.to(index), num_tokens)
    assert_bitwise_equal(gathered.cpu(), expected_gather(tokens, index))
    # One thread adds each (batch, channel) column in index order, as on CPU, so the sums are bitwise equal.
    assert_bitwise_equal(scattered.cpu(), expected_scatter(rows, index, num_tokens))


def test_cuda_is_deterministic_and_differentiable(cuda_backend):
    _, rows, index = make_inputs(4, 8, 4096, 256, torch.float32, distinct_rows=3, seed=3, device=cuda_backend.device)
    tokens = torch.randn(2, 5, 3, dtype=torch.float64, device=cuda_backend.device, requires_grad=True)
    duplicates = cuda_backend.to(INDEX_CASES['duplicates'])
    with cuda_backend:
        first = scatter_tokens(rows, index, 8)
        for _ in range(3):
            assert_bitwise_equal(scatter_tokens(rows, index, 8), first)
        assert torch.autograd.gradcheck(gather_tokens, (tokens, duplicates))
        assert torch.autograd.gradgradcheck(gather_tokens, (tokens, duplicates))


@requires_cuda_kernels
def test_cuda_opcheck():
    for tokens, rows, index, num_tokens in opcheck_samples():
        torch.library.opcheck(GATHER_OP, (tokens.cuda(), index.cuda()))
        torch.library.opcheck(SCATTER_OP, (rows.cuda(), index.cuda(), num_tokens))


@requires_cuda
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match='index is on cpu'):
        gather_tokens(torch.zeros(1, 5, 3, device='cuda'), torch.zeros(1, 2, dtype=torch.long))
