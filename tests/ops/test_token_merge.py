"""Tests of ``sparsevision.ops.merge_tokens`` and ``sparsevision.ops.unmerge_tokens``.

The native kernel is checked against the pure-PyTorch reference in
:mod:`sparsevision.ops.reference`: bitwise in float32 and float64 (both round
each product ``size * token``, add them in token order and divide once), bitwise
against a float32 computation rounded once in float16 and bfloat16, and close to
float32 there. Then hand-computed cases (ToMe's bipartite merge, identity,
everything into one slot, empty slots, extreme sizes), argument errors, float64
gradcheck and gradgradcheck, ``torch.library.opcheck``, determinism across
thread counts, ``torch.compile``, the reference fallback and, where a GPU is
present, the CUDA kernel.
"""
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsevision.ops import extension_info, merge_tokens, reference, unmerge_tokens

MERGE_OP = torch.ops.sparsevision.merge_tokens.default
REDUCED_DTYPES = (torch.float16, torch.bfloat16)
ROUNDING = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # relative error of rounding once

requires_native = pytest.mark.skipif(not extension_info().loaded, reason='sparsevision._C is not built')
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
requires_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and extension_info().cuda_kernels),
                                           reason='CUDA or the CUDA kernels of sparsevision._C are not available')


def make_inputs(batch, num_tokens, channels, num_out, dtype=torch.float32, used_slots=None, seed=0, device='cpu'):
    """Random ``tokens [B, N, C]``, ``sizes [B, N]`` in ``[0.5, 4.5)`` and ``index [B, N]``.

    ``index`` draws from the first ``used_slots`` slots (all ``num_out`` by
    default), so a small value crowds many tokens into few slots and leaves the
    others empty.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num_tokens, channels, generator=generator, dtype=torch.float64).to(device, dtype)
    sizes = (0.5 + 4 * torch.rand(batch, num_tokens, generator=generator, dtype=torch.float64)).to(device, dtype)
    high = num_out if used_slots is None else used_slots
    index = torch.randint(0, max(high, 1), (batch, num_tokens), generator=generator).to(device)
    return tokens, sizes, index


def exact_merge(tokens, sizes, index, num_out):
    """The merge in float64, one slot at a time, straight from the definition."""
    batch, _, channels = tokens.shape
    merged = torch.zeros(batch, num_out, channels, dtype=torch.float64)
    merged_sizes = torch.zeros(batch, num_out, dtype=torch.float64)
    for b in range(batch):
        for slot in range(num_out):
            members = (index[b] == slot).nonzero().flatten()
            if members.numel():
                weights = sizes[b, members].double()
                merged_sizes[b, slot] = weights.sum()
                merged[b, slot] = (weights[:, None] * tokens[b, members].double()).sum(0) / weights.sum()
    return merged, merged_sizes


def expected_merge(tokens, sizes, index, num_out):
    """Reference merge; reduced precision computes in float32 and rounds once, like the kernels."""
    if tokens.dtype in REDUCED_DTYPES:
        merged, merged_sizes = reference.merge_tokens(tokens.float(), sizes.float(), index, num_out)
        return merged.to(tokens.dtype), merged_sizes.to(tokens.dtype)
    return reference.merge_tokens(tokens, sizes, index, num_out)


def assert_bitwise_equal(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), f'max abs diff {(actual.double() - expected.double()).abs().max().item()}'


def assert_merge_equal(actual, expected):
    assert_bitwise_equal(actual[0], expected[0])
    assert_bitwise_equal(actual[1], expected[1])


@st.composite
def merge_shapes(draw):
    """``(B, N, C, num_out, used_slots, seed)``: B 1-3, N 0-50, C 1-70, num_out 1-N."""
    num_tokens = draw(st.integers(0, 50))
    num_out = draw(st.integers(1, max(num_tokens, 1)))
    return (draw(st.integers(1, 3)), num_tokens, draw(st.integers(1, 70)), num_out, draw(st.integers(1, num_out)),
            draw(st.integers(0, 2**31 - 1)))


HYPOTHESIS_EXAMPLES = [(3, 50, 70, 50, 50, 0), (2, 50, 65, 40, 2, 1), (1, 1, 1, 1, 1, 2), (3, 0, 5, 1, 1, 3)]


def with_examples(test):
    """Always run the hand-picked shapes too: one slot per token, crowded slots, one token, no tokens."""
    for shape in HYPOTHESIS_EXAMPLES:
        test = example(shape=shape)(test)
    return test


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@settings(max_examples=60, deadline=None)
@given(shape=merge_shapes())
@with_examples
def test_merge_matches_reference(dtype, shape):
    batch, num_tokens, channels, num_out, used_slots, seed = shape
    tokens, sizes, index = make_inputs(batch, num_tokens, channels, num_out, dtype, used_slots, seed)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, num_out)
    assert_merge_equal((merged, merged_sizes), reference.merge_tokens(tokens, sizes, index, num_out))
    exact, exact_sizes = exact_merge(tokens, sizes, index, num_out)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(merged.double(), exact, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(merged_sizes.double(), exact_sizes, rtol=tolerance, atol=0)


@pytest.mark.parametrize('dtype', REDUCED_DTYPES, ids=str)
@settings(max_examples=30, deadline=None)
@given(shape=merge_shapes())
@with_examples
def test_reduced_precision_rounds_float32_once(dtype, shape):
    batch, num_tokens, channels, num_out, used_slots, seed = shape
    tokens, sizes, index = make_inputs(batch, num_tokens, channels, num_out, dtype, used_slots, seed)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, num_out)
    assert_merge_equal((merged, merged_sizes), expected_merge(tokens, sizes, index, num_out))
    exact, exact_sizes = exact_merge(tokens, sizes, index, num_out)
    torch.testing.assert_close(merged.double(), exact, rtol=ROUNDING[dtype], atol=1e-5)
    torch.testing.assert_close(merged_sizes.double(), exact_sizes, rtol=ROUNDING[dtype], atol=0)


def bipartite_index(num_tokens, sources, destinations):
    """ToMe's bipartite merge as an index: even tokens form set A, odd tokens set B.

    A's token ``sources[k]`` merges into B's token ``destinations[k]`` (both
    positions within their set). Slots follow ToMe's output order: A's kept
    tokens in order, then all of B.
    """
    set_a, set_b = torch.arange(0, num_tokens, 2), torch.arange(1, num_tokens, 2)
    kept = [k for k in range(len(set_a)) if k not in sources]
    index = torch.empty(num_tokens, dtype=torch.long)
    index[set_a[kept]] = torch.arange(len(kept))
    index[set_b] = len(kept) + torch.arange(len(set_b))
    index[set_a[sources]] = len(kept) + torch.tensor(destinations)
    return index


def test_tome_bipartite_merge_matches_hand_computation():
    # 9 tokens: A = 0 2 4 6 8, B = 1 3 5 7. Tokens 4 and 8 join token 3, token 6 joins token 7; token 0 (class) stays.
    index = bipartite_index(9, sources=[2, 4, 3], destinations=[1, 1, 3]).expand(2, -1)
    assert index[0].tolist() == [0, 2, 1, 3, 3, 4, 5, 5, 3]
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 9, 6, generator=generator, dtype=torch.float64)
    sizes = torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 2.0, 5.0, 4.0], [1.0, 1.0, 7.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0]],
                         dtype=torch.float64)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, 6)
    for b in range(2):
        x, s = tokens[b], sizes[b]
        expected = torch.stack([x[0], x[2], x[1], (s[3] * x[3] + s[4] * x[4] + s[8] * x[8]) / (s[3] + s[4] + s[8]),
                                x[5], (s[7] * x[7] + s[6] * x[6]) / (s[7] + s[6])])
        expected_sizes = torch.stack([s[0], s[2], s[1], s[3] + s[4] + s[8], s[5], s[7] + s[6]])
        torch.testing.assert_close(merged[b], expected, rtol=1e-14, atol=1e-14)
        assert_bitwise_equal(merged_sizes[b], expected_sizes)
    assert_bitwise_equal(unmerge_tokens(merged, index)[:, 3], merged[:, 3])
    assert_bitwise_equal(unmerge_tokens(merged, index)[:, 8], merged[:, 3])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_identity_mapping_returns_the_input(dtype):
    tokens, sizes, _ = make_inputs(2, 13, 70, 13, dtype)
    identity = torch.arange(13).expand(2, -1)
    merged, merged_sizes = merge_tokens(tokens, torch.ones_like(sizes), identity, 13)
    assert_bitwise_equal(merged, tokens)
    assert_bitwise_equal(merged_sizes, torch.ones_like(sizes))
    merged, merged_sizes = merge_tokens(tokens, sizes, identity, 13)
    assert_bitwise_equal(merged_sizes, sizes)
    # (size * token) / size is the token up to the product's rounding.
    torch.testing.assert_close(merged, tokens, rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize('num_out', [1, 5])
def test_everything_into_one_slot(num_out):
    tokens, sizes, _ = make_inputs(2, 40, 67, num_out, torch.float64, seed=4)
    index = torch.zeros(2, 40, dtype=torch.long)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, num_out)
    expected = (sizes[..., None] * tokens).sum(1) / sizes.sum(1, keepdim=True)
    torch.testing.assert_close(merged[:, 0], expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(merged_sizes[:, 0], sizes.sum(1), rtol=1e-14, atol=0)
    assert_bitwise_equal(merged[:, 1:], torch.zeros(2, num_out - 1, 67, dtype=torch.float64))
    assert_bitwise_equal(merged_sizes[:, 1:], torch.zeros(2, num_out - 1, dtype=torch.float64))
    assert_merge_equal((merged, merged_sizes), reference.merge_tokens(tokens, sizes, index, num_out))


def test_empty_slots_hold_zeros_and_size_zero():
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [5.0, 6.0], [-7.0, 8.0]]])
    sizes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    merged, merged_sizes = merge_tokens(tokens, sizes, torch.tensor([[9, 0, 9, 3]]), 10)
    expected = torch.zeros(1, 10, 2)
    expected[0, 0] = torch.tensor([3.0, 4.0])
    expected[0, 3] = torch.tensor([-7.0, 8.0])
    expected[0, 9] = torch.tensor([4.0, 4.0])  # (1 * [1, -2] + 3 * [5, 6]) / 4
    assert_bitwise_equal(merged, expected)
    assert_bitwise_equal(merged_sizes, torch.tensor([[2.0, 0, 0, 4.0, 0, 0, 0, 0, 0, 4.0]]))


@pytest.mark.parametrize('batch, num_tokens, channels, num_out, used_slots', [
    pytest.param(1, 1, 1, 1, None, id='one token'),
    pytest.param(1, 197, 384, 184, None, id='batch 1 vit'),
    pytest.param(2, 0, 5, 3, None, id='no tokens'),
    pytest.param(0, 7, 5, 3, None, id='empty batch'),
    pytest.param(3, 7, 0, 4, None, id='no channels'),
    pytest.param(2, 30, 512, 7, 3, id='one full channel block'),
    pytest.param(2, 30, 513, 7, 3, id='channel block plus one'),
    pytest.param(2, 20, 1100, 9, None, id='three channel blocks'),
    pytest.param(256, 12, 16, 5, None, id='256 samples'),
    pytest.param(1, 3000, 8, 2, None, id='long slot lists'),
])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_edge_shapes(batch, num_tokens, channels, num_out, used_slots, dtype):
    tokens, sizes, index = make_inputs(batch, num_tokens, channels, num_out, dtype, used_slots)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, num_out)
    assert merged.shape == (batch, num_out, channels) and merged_sizes.shape == (batch, num_out)
    assert_merge_equal((merged, merged_sizes), expected_merge(tokens, sizes, index, num_out))


@pytest.mark.parametrize('dtype, huge, tiny', [(torch.float32, 1e30, 1e-30), (torch.float64, 1e300, 1e-300)],
                         ids=['float32', 'float64'])
def test_huge_and_tiny_sizes(dtype, huge, tiny):
    tokens, _, index = make_inputs(3, 50, 33, 6, dtype, seed=7)
    pattern = torch.tensor([huge, tiny, 1.0, tiny, huge * 1e-3], dtype=torch.float64)
    sizes = pattern.repeat(3, 10).to(dtype)
    merged, merged_sizes = merge_tokens(tokens, sizes, index, 6)
    assert torch.isfinite(merged).all() and torch.isfinite(merged_sizes).all()
    assert_merge_equal((merged, merged_sizes), reference.merge_tokens(tokens, sizes, index, 6))
    exact, exact_sizes = exact_merge(tokens, sizes, index, 6)
    rtol = 64 * torch.finfo(dtype).eps
    torch.testing.assert_close(merged.double(), exact, rtol=rtol, atol=rtol)
    torch.testing.assert_close(merged_sizes.double(), exact_sizes, rtol=rtol, atol=0)
    only_tiny = merge_tokens(tokens, torch.full_like(sizes, tiny), index, 6)[0]
    torch.testing.assert_close(only_tiny.double(), exact_merge(tokens, torch.ones_like(sizes), index, 6)[0],
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize('layout', ['transposed', 'channel slice', 'expanded batch'])
def test_non_contiguous_inputs(layout):
    generator = torch.Generator().manual_seed(1)
    if layout == 'transposed':
        tokens = torch.randn(70, 20, 3, generator=generator).permute(2, 1, 0)
        sizes = (1 + torch.rand(20, 3, generator=generator)).t()
        index = torch.randint(0, 9, (20, 3), generator=generator).t()
    elif layout == 'channel slice':
        tokens = torch.randn(3, 20, 140, generator=generator)[..., ::2]
        sizes = (1 + torch.rand(3, 40, generator=generator))[:, ::2]
        index = torch.randint(0, 9, (3, 40), generator=generator)[:, 1::2]
    else:
        tokens = torch.randn(1, 20, 70, generator=generator).expand(3, -1, -1)
        sizes = (1 + torch.rand(1, 20, generator=generator)).expand(3, -1)
        index = torch.randint(0, 9, (1, 20), generator=generator).expand(3, -1)
    assert not (tokens.is_contiguous() or sizes.is_contiguous() or index.is_contiguous())
    assert_merge_equal(merge_tokens(tokens, sizes, index, 9), reference.merge_tokens(tokens, sizes, index, 9))


def test_unmerge_gives_every_token_its_slot():
    merged = torch.arange(12.0).reshape(2, 3, 2)
    index = torch.tensor([[2, 0, 2, 1], [1, 1, 1, 1]])
    expected = torch.tensor([[[4.0, 5.0], [0.0, 1.0], [4.0, 5.0], [2.0, 3.0]],
                             [[8.0, 9.0], [8.0, 9.0], [8.0, 9.0], [8.0, 9.0]]])
    assert_bitwise_equal(unmerge_tokens(merged, index), expected)


ONES = torch.ones(2, 5)
TOKENS = torch.zeros(2, 5, 3)
INDEX = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 2, 2, 2]])


@pytest.mark.parametrize('call, message', [
    (lambda: merge_tokens(TOKENS, ONES.double(), INDEX, 3), r'sizes are torch.float64 but tokens are torch.float32'),
    (lambda: merge_tokens(TOKENS, ONES.long(), INDEX, 3), r'sizes are torch.int64.*sizes.to\(tokens.dtype\)'),
    (lambda: merge_tokens(TOKENS, ONES[:, :4], INDEX, 3), r'sizes must be \[batch, tokens\] = \[2, 5\]'),
    (lambda: merge_tokens(TOKENS, ONES[0], INDEX, 3), r'sizes must be \[batch, tokens\]'),
    (lambda: merge_tokens(TOKENS, ONES.index_fill(1, torch.tensor([3]), 0), INDEX, 3), r'> 0.*minimum 0\.0'),
    (lambda: merge_tokens(TOKENS, -ONES, INDEX, 3), r'sizes must be > 0.*torch.ones'),
    (lambda: merge_tokens(TOKENS, ONES.index_fill(1, torch.tensor([0]), float('nan')), INDEX, 3), '> 0'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX.int(), 3), 'int64'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX, 2), r'\[0, 2\).*\[0, 2\]'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX - 1, 3), r'\[0, 3\).*\[-1, 1\]'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX[:, :4], 3), r'index must be \[batch, tokens\] = \[2, 5\]'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX[:1], 3), 'batch=2'),
    (lambda: merge_tokens(TOKENS[0], ONES, INDEX, 3), 'tokens must be'),
    (lambda: merge_tokens(TOKENS.long(), ONES.long(), INDEX, 3), 'floating'),
    (lambda: merge_tokens(TOKENS, ONES, INDEX, -1), 'num_out must be >= 0'),
    (lambda: unmerge_tokens(torch.zeros(2, 3, 4), INDEX + 1), r'\[0, 3\).*\[1, 3\]'),
], ids=['float64 sizes', 'integer sizes', 'sizes too short', 'sizes 1d', 'zero size', 'negative sizes', 'nan size',
        'int32 index', 'index == num_out', 'negative index', 'index too short', 'index batch', 'tokens 2d',
        'integer tokens', 'negative num_out', 'unmerge out of range'])
def test_invalid_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@requires_native
@pytest.mark.parametrize('call, message', [
    (lambda: MERGE_OP(TOKENS, ONES, INDEX, 2), r'index 2 at position 2 is outside \[0, 2\)'),
    (lambda: MERGE_OP(TOKENS, ONES, INDEX - 1, 3), r'index -1 at position 0 is outside \[0, 3\)'),
    (lambda: MERGE_OP(TOKENS, ONES[:, :4], INDEX, 3), r'sizes must be \[batch, tokens\]'),
    (lambda: MERGE_OP(TOKENS, ONES.double(), INDEX, 3), 'sizes are Double but tokens are Float'),
    (lambda: MERGE_OP(TOKENS, ONES, INDEX[:, :4], 3), '4 entries per sample'),
    (lambda: MERGE_OP(TOKENS, ONES, INDEX, -1), 'num_out must be >= 0'),
], ids=['index == num_out', 'negative index', 'sizes shape', 'sizes dtype', 'index shape', 'negative num_out'])
def test_native_kernel_checks_arguments_without_python_wrapper(call, message):
    with pytest.raises(ValueError, match=message):
        call()


INDEX_CASES = {
    'pairs and singles': (torch.tensor([[0, 1, 1, 2, 0], [2, 2, 2, 0, 1]]), 3),
    'empty slots': (torch.tensor([[4, 0, 4, 4, 1], [3, 3, 0, 0, 3]]), 6),
    'identity': (torch.arange(5).expand(2, -1), 5),
    'all in one slot': (torch.zeros(2, 5, dtype=torch.long), 2),
}


@pytest.mark.parametrize('index, num_out', INDEX_CASES.values(), ids=INDEX_CASES.keys())
def test_gradients(index, num_out):
    tokens, sizes, _ = make_inputs(2, 5, 3, num_out, torch.float64, seed=num_out)
    inputs = (tokens.requires_grad_(), sizes.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, s: merge_tokens(x, s, index, num_out), inputs)
    assert torch.autograd.gradgradcheck(lambda x, s: merge_tokens(x, s, index, num_out), inputs)


@pytest.mark.parametrize('output', ['merged', 'merged_sizes', 'both'])
def test_gradients_match_autograd_of_reference(output):
    tokens, sizes, index = make_inputs(3, 40, 20, 12, torch.float64, used_slots=9, seed=2)
    grads = []
    for merge in (merge_tokens, reference.merge_tokens):
        leaves = (tokens.clone().requires_grad_(), sizes.clone().requires_grad_())
        merged, merged_sizes = merge(*leaves, index, 12)
        loss = {'merged': merged.sin().sum(), 'merged_sizes': merged_sizes.square().sum(),
                'both': (merged * merged_sizes[..., None]).sum()}[output]
        grads.append(torch.autograd.grad(loss, leaves, materialize_grads=True))
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_gradient_of_tokens_alone():
    tokens, sizes, index = make_inputs(2, 9, 4, 3, torch.float64, seed=5)
    tokens.requires_grad_()
    merged, _ = merge_tokens(tokens, sizes, index, 3)
    (grad,) = torch.autograd.grad(merged.sum(), tokens)
    slot_sizes = torch.zeros(2, 3, dtype=torch.float64).scatter_add_(1, index, sizes).gather(1, index)
    torch.testing.assert_close(grad, (sizes / slot_sizes)[..., None].expand(-1, -1, 4), rtol=1e-15, atol=0)


def opcheck_samples():
    """``(tokens, sizes, index, num_out)`` covering crowded and empty slots, empty shapes and dtypes."""
    samples = []
    for batch, num_tokens, channels, num_out, used_slots, dtype in [
        (2, 7, 3, 4, None, torch.float32),
        (2, 12, 70, 5, 2, torch.float64),
        (1, 6, 4, 3, 1, torch.bfloat16),
        (2, 0, 3, 2, None, torch.float32),
        (0, 7, 3, 3, None, torch.float32),
    ]:
        samples.append((*make_inputs(batch, num_tokens, channels, num_out, dtype, used_slots, seed=num_tokens),
                        num_out))
    return samples


@pytest.mark.parametrize('requires_grad', [False, True])
def test_opcheck(requires_grad):
    for tokens, sizes, index, num_out in opcheck_samples():
        torch.library.opcheck(MERGE_OP, (tokens.requires_grad_(requires_grad), sizes.requires_grad_(requires_grad),
                                         index, num_out))


@requires_native
@pytest.mark.parametrize('batch, num_tokens, channels, num_out, used_slots', [
    pytest.param(4, 4096, 256, 8, 3, id='long lists'),
    pytest.param(64, 197, 384, 184, None, id='vit batch'),
    pytest.param(2, 64, 5000, 4, None, id='many channel blocks'),
])
def test_merge_is_deterministic_across_thread_counts(batch, num_tokens, channels, num_out, used_slots):
    tokens, sizes, index = make_inputs(batch, num_tokens, channels, num_out, torch.float32, used_slots, seed=3)
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_thread = merge_tokens(tokens, sizes, index, num_out)
        torch.set_num_threads(2)
        two_threads = [merge_tokens(tokens, sizes, index, num_out) for _ in range(3)]
    finally:
        torch.set_num_threads(previous_threads)
    for out in two_threads:
        assert_merge_equal(out, single_thread)
    assert_merge_equal(single_thread, reference.merge_tokens(tokens, sizes, index, num_out))


def merge_block(tokens, sizes, index, num_out):
    """Merge, transform the merged tokens, unmerge and add back: ToMe's pattern around a block."""
    merged, merged_sizes = merge_tokens(tokens, sizes, index, num_out)
    return tokens + unmerge_tokens(merged.tanh() * merged_sizes[..., None], index)


@pytest.mark.parametrize('dynamic', [False, True], ids=['static', 'dynamic'])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(merge_block, fullgraph=True, backend='aot_eager', dynamic=dynamic)
    for batch, num_tokens, num_out in [(2, 10, 7), (3, 12, 5)]:
        tokens, sizes, index = make_inputs(batch, num_tokens, 70, num_out, used_slots=num_out - 1)
        eager_leaves = (tokens.clone().requires_grad_(), sizes.clone().requires_grad_())
        compiled_leaves = (tokens.clone().requires_grad_(), sizes.clone().requires_grad_())
        eager_out = merge_block(*eager_leaves, index, num_out)
        compiled_out = compiled(*compiled_leaves, index, num_out)
        assert_bitwise_equal(compiled_out, eager_out)
        eager_out.square().sum().backward()
        compiled_out.square().sum().backward()
        for compiled_leaf, eager_leaf in zip(compiled_leaves, eager_leaves):
            assert_bitwise_equal(compiled_leaf.grad, eager_leaf.grad)


FALLBACK_SCRIPT = textwrap.dedent('''
    import sys

    import torch

    import sparsevision.ops as ops

    assert not ops.extension_info().loaded
    tokens, sizes, index = torch.load(sys.argv[1])
    tokens.requires_grad_()
    sizes.requires_grad_()
    merged, merged_sizes = ops.merge_tokens(tokens, sizes, index, 9)
    (merged.square().sum() + merged_sizes.sum()).backward()
    torch.save((merged.detach(), merged_sizes.detach(), tokens.grad, sizes.grad), sys.argv[2])
''')


def test_reference_fallback_matches_native(tmp_path, python_process):
    tokens, sizes, index = make_inputs(3, 11, 70, 9, used_slots=6, seed=5)
    torch.save((tokens, sizes, index), tmp_path / 'inputs.pt')
    result = python_process(['-W', 'ignore::RuntimeWarning', '-c', FALLBACK_SCRIPT, tmp_path / 'inputs.pt',
                             tmp_path / 'out.pt'], env={'SPARSEVISION_DISABLE_EXTENSION': '1'}, timeout=120)
    assert result.returncode == 0, result.stderr
    fallback = torch.load(tmp_path / 'out.pt')
    tokens.requires_grad_()
    sizes.requires_grad_()
    merged, merged_sizes = merge_tokens(tokens, sizes, index, 9)
    (merged.square().sum() + merged_sizes.sum()).backward()
    for actual, expected in zip(fallback, (merged.detach(), merged_sizes.detach(), tokens.grad, sizes.grad)):
        assert_bitwise_equal(actual, expected)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('batch, num_tokens, channels, num_out, used_slots', [
    (3, 50, 70, 50, None), (3, 50, 70, 40, 2), (1, 197, 384, 184, None), (256, 12, 16, 5, None),
    (2, 0, 5, 3, None), (0, 7, 5, 3, None), (3, 7, 0, 4, None), (1, 3000, 8, 2, None),
])
def test_cuda_matches_reference(cuda_backend, dtype, batch, num_tokens, channels, num_out, used_slots):
    tokens, sizes, index = make_inputs(batch, num_tokens, channels, num_out, dtype, used_slots)
    with cuda_backend:
        merged, merged_sizes = merge_tokens(*map(cuda_backend.to, (tokens, sizes, index)), num_out)
    # Products rounded, added in token order, divided once: as on CPU, so bitwise equal.
    assert_merge_equal((merged.cpu(), merged_sizes.cpu()), expected_merge(tokens, sizes, index, num_out))


def test_cuda_is_deterministic_and_differentiable(cuda_backend):
    tokens, sizes, index = make_inputs(4, 4096, 256, 8, torch.float32, used_slots=3, seed=3,
                                       device=cuda_backend.device)
    with cuda_backend:
        first = merge_tokens(tokens, sizes, index, 8)
        for _ in range(3):
            assert_merge_equal(merge_tokens(tokens, sizes, index, 8), first)
    index, num_out = INDEX_CASES['empty slots']
    index = cuda_backend.to(index)
    tokens, sizes, _ = make_inputs(2, 5, 3, num_out, torch.float64, device=cuda_backend.device)
    inputs = (tokens.requires_grad_(), sizes.requires_grad_())
    with cuda_backend:
        assert torch.autograd.gradcheck(lambda x, s: merge_tokens(x, s, index, num_out), inputs)
        assert torch.autograd.gradgradcheck(lambda x, s: merge_tokens(x, s, index, num_out), inputs)


@requires_cuda_kernels
def test_cuda_opcheck():
    for tokens, sizes, index, num_out in opcheck_samples():
        torch.library.opcheck(MERGE_OP, (tokens.cuda(), sizes.cuda(), index.cuda(), num_out))


@requires_cuda
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match='index is on cpu'):
        merge_tokens(TOKENS.cuda(), ONES.cuda(), INDEX, 3)
    with pytest.raises(ValueError, match=r'sizes are on cpu.*sizes.to\(tokens.device\)'):
        merge_tokens(TOKENS.cuda(), ONES, INDEX.cuda(), 3)
