"""Tests of ``sparsevision.ops.select_tokens``.

The native kernel must equal, position for position, both the pure-PyTorch
reference in :mod:`sparsevision.ops.reference` and a brute-force sort of the
definition (score descending, position ascending, NaN last): on random scores,
on scores with heavy ties, and on scores with NaN and infinities. Then the
edge cases (keep 0 and M, all scores equal, one token, no tokens, signed
zeros), argument errors, determinism across thread counts,
``torch.library.opcheck``, ``torch.compile``, the reference fallback and,
where a GPU is present, the CUDA kernel.
"""
import math
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsevision.ops import extension_info, gather_tokens, reference, select_tokens

SELECT_OP = torch.ops.sparsevision.select_tokens.default
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
KINDS = ('random', 'ties', 'nan')

requires_native = pytest.mark.skipif(not extension_info().loaded, reason='sparsevision._C is not built')
requires_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and extension_info().cuda_kernels),
                                           reason='CUDA or the CUDA kernels of sparsevision._C are not available')


def make_scores(batch, num_tokens, dtype=torch.float32, kind='random', seed=0):
    """``[batch, num_tokens]`` scores: ``random`` normal, ``ties`` from 3 values, ``nan`` with NaN, +-inf and +-0."""
    generator = torch.Generator().manual_seed(seed)
    if kind == 'ties':
        return torch.randint(-1, 2, (batch, num_tokens), generator=generator).to(dtype) * 0.5
    scores = torch.randn(batch, num_tokens, generator=generator, dtype=torch.float64)
    if kind == 'nan':
        specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0], dtype=torch.float64)
        choice = torch.randint(0, 2 * len(specials), (batch, num_tokens), generator=generator)
        special = choice < len(specials)
        scores[special] = specials[choice[special]]
    return scores.to(dtype)


def brute_force(scores, keep, num_prefix):
    """The definition, one sample at a time with Python's sort: NaN last, score descending, position ascending."""
    rows = []
    for row in scores.double().tolist():
        ranked = sorted(range(len(row)), key=lambda i: (math.isnan(row[i]), -row[i] if row[i] == row[i] else 0, i))
        rows.append(list(range(num_prefix)) + sorted(num_prefix + i for i in ranked[:keep]))
    return torch.tensor(rows, dtype=torch.int64).reshape(scores.shape[0], num_prefix + keep)


def assert_index_equal(actual, expected):
    assert actual.dtype == torch.int64 and actual.shape == expected.shape, (actual.dtype, actual.shape)
    assert torch.equal(actual, expected), f'first difference in sample {(actual != expected).nonzero()[0].tolist()}'


@st.composite
def select_cases(draw):
    """``(B, M, keep, num_prefix, dtype, kind, seed)``: B 1-4, M 0-300, keep 0-M, num_prefix 0-5."""
    num_tokens = draw(st.integers(0, 300))
    return (draw(st.integers(1, 4)), num_tokens, draw(st.integers(0, num_tokens)), draw(st.integers(0, 5)),
            draw(st.sampled_from(DTYPES[:3])), draw(st.sampled_from(KINDS)), draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=150, deadline=None)
@given(case=select_cases())
@example(case=(4, 300, 150, 5, torch.float32, 'ties', 0))
@example(case=(2, 300, 299, 0, torch.bfloat16, 'nan', 1))
@example(case=(1, 1, 1, 0, torch.float64, 'random', 2))
@example(case=(3, 0, 0, 2, torch.float32, 'random', 3))
def test_select_matches_reference_and_definition(case):
    batch, num_tokens, keep, num_prefix, dtype, kind, seed = case
    scores = make_scores(batch, num_tokens, dtype, kind, seed)
    index = select_tokens(scores, keep, num_prefix)
    assert_index_equal(index, brute_force(scores, keep, num_prefix))
    assert_index_equal(reference.select_tokens(scores, keep, num_prefix), index)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('kind', KINDS)
def test_vit_shape_in_every_dtype(dtype, kind):
    scores = make_scores(8, 196, dtype, kind, seed=5)
    index = select_tokens(scores, 137, 1)
    assert_index_equal(index, brute_force(scores, 137, 1))
    assert_index_equal(index, reference.select_tokens(scores, 137, 1))


def test_hand_computed_selection():
    scores = torch.tensor([[0.5, 2.0, -1.0, 2.0, math.nan, 3.0], [math.nan, -math.inf, 0.0, -0.0, math.inf, 0.0]])
    assert select_tokens(scores, 3, 2).tolist() == [[0, 1, 3, 5, 7], [0, 1, 4, 5, 6]]
    # NaN ranks after -inf; -0.0 and 0.0 tie and rank by position.
    assert select_tokens(scores, 5).tolist() == [[0, 1, 2, 3, 5], [1, 2, 3, 4, 5]]


@pytest.mark.parametrize('batch, num_tokens, keep, num_prefix', [
    pytest.param(3, 50, 0, 2, id='keep 0'),
    pytest.param(3, 50, 50, 1, id='keep all'),
    pytest.param(1, 196, 137, 1, id='batch 1'),
    pytest.param(2, 1, 1, 0, id='one token kept'),
    pytest.param(2, 1, 0, 0, id='one token dropped'),
    pytest.param(2, 0, 0, 3, id='no tokens'),
    pytest.param(0, 10, 4, 1, id='empty batch'),
    pytest.param(2, 5, 0, 0, id='empty result'),
])
@pytest.mark.parametrize('kind', KINDS)
def test_edge_shapes(batch, num_tokens, keep, num_prefix, kind):
    scores = make_scores(batch, num_tokens, kind=kind, seed=num_tokens)
    index = select_tokens(scores, keep, num_prefix)
    assert_index_equal(index, brute_force(scores, keep, num_prefix))
    assert_index_equal(reference.select_tokens(scores, keep, num_prefix), index)


@pytest.mark.parametrize('value', [0.0, -1.5, math.inf, -math.inf, math.nan])
def test_equal_scores_keep_the_first_positions(value):
    index = select_tokens(torch.full((3, 40), value), 17, 2)
    assert_index_equal(index, torch.arange(19).expand(3, -1))


def test_keep_all_and_keep_none():
    scores = make_scores(3, 30, kind='nan', seed=9)
    assert_index_equal(select_tokens(scores, 30, 4), torch.arange(34).expand(3, -1))
    assert_index_equal(select_tokens(scores, 0, 4), torch.arange(4).expand(3, -1))


def test_non_contiguous_scores():
    scores = make_scores(60, 5, kind='ties', seed=2).t()
    assert not scores.is_contiguous()
    assert_index_equal(select_tokens(scores, 31, 1), brute_force(scores, 31, 1))


def test_scores_that_require_grad_give_an_index_without_grad():
    scores = make_scores(2, 20, seed=3).requires_grad_()
    index = select_tokens(scores, 7, 1)
    assert not index.requires_grad and index.grad_fn is None
    assert_index_equal(index, brute_force(scores.detach(), 7, 1))


SCORES = torch.zeros(2, 5)


@pytest.mark.parametrize('call, message', [
    (lambda: select_tokens(SCORES[0], 2), r'scores must be \[batch, tokens\], got shape \(5,\)'),
    (lambda: select_tokens(SCORES[None], 2), r'scores must be \[batch, tokens\], got shape \(1, 2, 5\)'),
    (lambda: select_tokens(SCORES.long(), 2), 'scores must be floating point, got torch.int64'),
    (lambda: select_tokens(SCORES, 6), r'keep must lie in \[0, 5\].*got 6'),
    (lambda: select_tokens(SCORES, -1), r'keep must lie in \[0, 5\].*got -1'),
    (lambda: select_tokens(SCORES, 2, -1), 'num_prefix must be >= 0, got -1'),
], ids=['1d', '3d', 'integer scores', 'keep > M', 'negative keep', 'negative num_prefix'])
def test_invalid_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@requires_native
@pytest.mark.parametrize('call, message', [
    (lambda: SELECT_OP(SCORES[0], 2, 0), r'scores must be \[batch, tokens\]'),
    (lambda: SELECT_OP(SCORES.long(), 2, 0), 'scores must be floating point'),
    (lambda: SELECT_OP(SCORES, 6, 0), r'keep must lie in \[0, 5\], got 6'),
    (lambda: SELECT_OP(SCORES, -1, 0), r'keep must lie in \[0, 5\], got -1'),
    (lambda: SELECT_OP(SCORES, 2, -1), 'num_prefix must be >= 0'),
], ids=['1d', 'integer scores', 'keep > M', 'negative keep', 'negative num_prefix'])
def test_native_kernel_checks_arguments_without_python_wrapper(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@requires_native
@pytest.mark.parametrize('kind', KINDS)
def test_select_is_deterministic_across_thread_counts(kind):
    scores = make_scores(256, 196, torch.float32, kind, seed=7)
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_thread = select_tokens(scores, 137, 1)
        torch.set_num_threads(2)
        two_threads = [select_tokens(scores, 137, 1) for _ in range(3)]
    finally:
        torch.set_num_threads(previous_threads)
    for index in two_threads:
        assert_index_equal(index, single_thread)
    assert_index_equal(single_thread, reference.select_tokens(scores, 137, 1))


def opcheck_samples():
    """``(scores, keep, num_prefix)`` over dtypes, ties, NaN, keep 0 and M, empty shapes."""
    return [(make_scores(batch, num_tokens, dtype, kind, seed=num_tokens), keep, num_prefix)
            for batch, num_tokens, keep, num_prefix, dtype, kind in [
                (2, 9, 4, 1, torch.float32, 'random'),
                (3, 12, 5, 0, torch.float64, 'ties'),
                (1, 8, 3, 2, torch.bfloat16, 'nan'),
                (2, 6, 0, 1, torch.float32, 'random'),
                (2, 6, 6, 0, torch.float32, 'nan'),
                (0, 6, 2, 1, torch.float32, 'random'),
            ]]


@pytest.mark.parametrize('requires_grad', [False, True])
def test_opcheck(requires_grad):
    for scores, keep, num_prefix in opcheck_samples():
        torch.library.opcheck(SELECT_OP, (scores.requires_grad_(requires_grad), keep, num_prefix))


def prune_tokens(tokens, scores, keep):
    """Keep the class token and the ``keep`` highest-scored patch tokens, in order: EViT's pruning step."""
    return gather_tokens(tokens, select_tokens(scores, keep, num_prefix=1))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(prune_tokens, fullgraph=True, backend='aot_eager')
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 21, 8, generator=generator)
    scores = make_scores(3, 20, kind='ties', seed=1)
    assert torch.equal(compiled(tokens, scores, 9), prune_tokens(tokens, scores, 9))


FALLBACK_SCRIPT = textwrap.dedent('''
    import sys

    import torch

    import sparsevision.ops as ops

    assert not ops.extension_info().loaded
    scores = torch.load(sys.argv[1])
    torch.save(ops.select_tokens(scores, 40, 2), sys.argv[2])
''')


def test_reference_fallback_matches_native(tmp_path, python_process):
    scores = make_scores(3, 70, kind='nan', seed=4)
    torch.save(scores, tmp_path / 'scores.pt')
    result = python_process(['-W', 'ignore::RuntimeWarning', '-c', FALLBACK_SCRIPT, tmp_path / 'scores.pt',
                             tmp_path / 'out.pt'], env={'SPARSEVISION_DISABLE_EXTENSION': '1'}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert_index_equal(torch.load(tmp_path / 'out.pt'), select_tokens(scores, 40, 2))


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('batch, num_tokens, keep, num_prefix', [
    (3, 300, 150, 5), (32, 196, 137, 1), (2, 50, 0, 2), (2, 50, 50, 0), (1, 1, 1, 0), (2, 0, 0, 3), (0, 10, 4, 1),
])
def test_cuda_matches_cpu(cuda_backend, dtype, kind, batch, num_tokens, keep, num_prefix):
    scores = make_scores(batch, num_tokens, dtype, kind, seed=num_tokens)
    with cuda_backend:
        index = select_tokens(cuda_backend.to(scores), keep, num_prefix)
    assert index.device == cuda_backend.device
    assert_index_equal(index.cpu(), brute_force(scores, keep, num_prefix))


@requires_cuda_kernels
def test_cuda_opcheck():
    for scores, keep, num_prefix in opcheck_samples():
        torch.library.opcheck(SELECT_OP, (scores.cuda(), keep, num_prefix))
