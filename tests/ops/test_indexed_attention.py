"""sparsevision::indexed_attention: the native CPU kernel against the reference and against masked dense attention,
on random and adversarial index lists (empty rows, one key, every key, duplicates, no slots, no queries), gradients
(float64 gradcheck), opcheck, reduced precision, bad input, and bitwise determinism across thread counts."""
import pytest
import torch
import torch.nn.functional as F

from sparsevision.ops import extension_info, indexed_attention, reference

OP = torch.ops.sparsevision.indexed_attention.default
requires_native = pytest.mark.skipif(not extension_info().cpu_kernels, reason='sparsevision._C is not built')


def random_inputs(queries=9, keys=11, heads=2, head_dim=5, value_dim=3, slots=6, dtype=torch.float64, seed=0,
                  with_bias=True, empty_fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    query, key = (torch.randn(rows, heads, head_dim, generator=generator, dtype=dtype) for rows in (queries, keys))
    value = torch.randn(keys, heads, value_dim, generator=generator, dtype=dtype)
    index = torch.randint(0, max(keys, 1), (queries, slots), generator=generator, dtype=torch.int32)
    index[torch.rand(queries, slots, generator=generator) < empty_fraction] = -1
    if keys == 0:
        index.fill_(-1)
    bias = torch.randn(queries, heads, slots, generator=generator, dtype=dtype) if with_bias else None
    return query, key, value, index, bias


def adversarial_indices(keys):
    return {
        'empty rows': torch.tensor([[-1, -1, -1], [0, -1, 2], [-1, -1, -1]], dtype=torch.int32),
        'one key': torch.tensor([[3, -1, -1], [-1, 0, -1], [-1, -1, keys - 1]], dtype=torch.int32),
        'duplicates': torch.tensor([[1, 1, 1], [2, 2, -1], [0, 1, 0]], dtype=torch.int32),
        'every key': torch.arange(keys, dtype=torch.int32).repeat(3, 1),
        'no slots': torch.zeros(3, 0, dtype=torch.int32),
    }


@requires_native
@pytest.mark.parametrize('case', list(adversarial_indices(11)))
@pytest.mark.parametrize('with_bias', [False, True])
def test_native_equals_reference_on_adversarial_lists(case, with_bias):
    index = adversarial_indices(11)[case]
    query, key, value, _, _ = random_inputs(queries=3, slots=index.shape[1], seed=1)
    bias = torch.randn(3, 2, index.shape[1], dtype=torch.float64) if with_bias else None
    out, lse = OP(query, key, value, index, bias, 0.4)
    expected_out, expected_lse = reference.indexed_attention(query, key, value, index, bias, 0.4)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-12, atol=1e-12)
    empty = (index < 0).all(dim=1)
    assert torch.equal(out[empty], torch.zeros_like(out[empty])) and torch.isneginf(lse[empty]).all()


@requires_native
@pytest.mark.parametrize('shape', [(9, 11, 2, 5, 3, 6), (64, 40, 4, 32, 32, 49), (1, 1, 1, 1, 1, 1),
                                   (0, 5, 2, 4, 4, 3), (4, 0, 2, 4, 4, 3)])
def test_native_equals_reference_on_random_lists(shape):
    queries, keys, heads, head_dim, value_dim, slots = shape
    for seed, dtype in enumerate((torch.float32, torch.float64)):
        inputs = random_inputs(queries, keys, heads, head_dim, value_dim, slots, dtype=dtype, seed=seed)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        for got, expected in zip(OP(*inputs, 0.3), reference.indexed_attention(*inputs, 0.3)):
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_equals_masked_dense_attention():
    """Without duplicates, indexed attention is dense attention whose mask allows each query its listed keys."""
    query, key, value, index, _ = random_inputs(queries=12, keys=10, heads=3, head_dim=8, value_dim=8, slots=5,
                                                dtype=torch.float32, seed=2, with_bias=False, empty_fraction=0.0)
    index = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(row))[:5]
                         for row in range(12)]).to(torch.int32)
    allowed = torch.zeros(12, 10, dtype=torch.bool)
    allowed.scatter_(1, index.long(), True)
    dense = F.scaled_dot_product_attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
                                           attn_mask=allowed)
    torch.testing.assert_close(indexed_attention(query, key, value, index), dense.transpose(0, 1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('case', list(adversarial_indices(11)) + ['random'])
def test_gradcheck(case):
    query, key, value, index, bias = random_inputs(queries=3, slots=3, seed=3)
    if case != 'random':
        index = adversarial_indices(11)[case]
        bias = torch.randn(3, 2, index.shape[1], dtype=torch.float64)
    tensors = [tensor.requires_grad_() for tensor in (query, key, value, bias)]
    assert torch.autograd.gradcheck(lambda q, k, v, b: indexed_attention(q, k, v, index, b, scale=0.7), tensors)
    assert torch.autograd.gradcheck(lambda q, k, v: indexed_attention(q, k, v, index), tensors[:3])


@requires_native
def test_backward_equals_reference():
    query, key, value, index, bias = random_inputs(queries=50, keys=30, heads=3, head_dim=16, value_dim=8, slots=12,
                                                   dtype=torch.float32, seed=4)
    grad_out = torch.randn(50, 3, 8)
    out, lse = OP(query, key, value, index, bias, 0.25)
    native = torch.ops.sparsevision.indexed_attention_backward(grad_out, query, key, value, index, bias, out, lse,
                                                               0.25)
    expected = reference.indexed_attention_backward(grad_out, query, key, value, index, bias, out, lse, 0.25)
    for got, want in zip(native, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('queries', [1, 40])
def test_a_bias_shared_by_every_query(queries):
    """A ``[1, H, L]`` bias (one per kernel tap, say) acts as that bias repeated for every query."""
    query, key, value, index, _ = random_inputs(queries=queries, keys=30, slots=7, seed=8)
    shared = torch.randn(1, 2, 7, dtype=torch.float64, requires_grad=True)
    repeated = shared.detach().repeat(queries, 1, 1).requires_grad_()
    out = indexed_attention(query, key, value, index, shared)
    expected = indexed_attention(query, key, value, index, repeated)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(shared.grad, repeated.grad.sum(0, keepdim=True), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda b: indexed_attention(query, key, value, index, b), shared)


@requires_native
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_accumulates_in_float32(dtype):
    inputs = random_inputs(queries=40, keys=30, heads=2, head_dim=64, value_dim=64, slots=20, dtype=dtype, seed=5)
    out, lse = OP(*inputs, 0.125)
    assert out.dtype == dtype and lse.dtype == torch.float32
    exact_out, exact_lse = reference.indexed_attention(*(t.double() if t.is_floating_point() else t for t in inputs),
                                                       0.125)
    torch.testing.assert_close(lse, exact_lse.float(), rtol=1e-3, atol=1e-3)
    # one rounding of the float32 result to the storage type
    assert ((out.double() - exact_out).abs() <= exact_out.abs() * 2 * torch.finfo(dtype).eps + 1e-6).all()


@requires_native
def test_bitwise_identical_across_thread_counts_and_runs():
    inputs = random_inputs(queries=300, keys=200, heads=4, head_dim=32, value_dim=32, slots=27, dtype=torch.float32,
                           seed=6)
    grad_out = torch.randn(300, 4, 32, generator=torch.Generator().manual_seed(7))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            tensors = [tensor.clone().requires_grad_() for tensor in (inputs[0], inputs[1], inputs[2], inputs[4])]
            shared_bias = inputs[4][:1].clone().requires_grad_()
            out = indexed_attention(tensors[0], tensors[1], tensors[2], inputs[3], tensors[3])
            shared_out = indexed_attention(*tensors[:3], inputs[3], shared_bias)
            torch.autograd.backward([out, shared_out], [grad_out, grad_out])
            tensors.append(shared_bias)
            results.append([out.detach()] + [tensor.grad for tensor in tensors])
    finally:
        torch.set_num_threads(previous)
    for result in results[1:]:
        for got, first in zip(result, results[0]):
            assert torch.equal(got, first)


@pytest.mark.parametrize('with_bias', [False, True])
def test_opcheck(with_bias):
    for seed, (shape, dtype) in enumerate([((9, 11, 2, 5, 3, 6), torch.float32), ((3, 4, 1, 8, 8, 4), torch.float64),
                                           ((5, 6, 2, 4, 4, 3), torch.bfloat16), ((0, 6, 2, 4, 4, 3), torch.float32)]):
        query, key, value, index, bias = random_inputs(*shape, dtype=dtype, seed=seed, with_bias=with_bias)
        for tensor in (query, key, value, bias):
            if tensor is not None:
                tensor.requires_grad_()
        torch.library.opcheck(OP, (query, key, value, index, bias, 0.5))


def test_bad_input_raises():
    query, key, value, index, bias = random_inputs(dtype=torch.float32)
    cases = [
        ((query, key, value, index.long()), 'index must be int32'),
        ((query, key[:, :1], value, index), 'do not fit query'),
        ((query, key, value[:3], index), 'do not fit query'),
        ((query, key.double(), value, index), 'share one floating dtype'),
        ((query[:3], key, value, index), 'one row per query|queries=3'),
        ((query, key, value, index, bias[:, :1]), 'bias must be'),
        ((query, key, value, torch.full_like(index, 11)), 'kernel map entries must be -1 or rows'),
        ((query, key, value, torch.full_like(index, -2)), 'kernel map entries must be -1 or rows'),
        ((query[0], key, value, index), 'must be \\[rows, heads, head_dim\\]'),
        ((query[:, :, :0], key[:, :, :0], value, index), 'head_dim must be positive'),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            indexed_attention(*arguments)


@requires_native
def test_the_native_op_checks_its_index_itself():
    query, key, value, index, bias = random_inputs(dtype=torch.float32)
    index[2, 1] = 11
    with pytest.raises(ValueError, match='index entries must be -1 .* got 11 at query 2, slot 1'):
        OP(query, key, value, index, bias, 1.0)


BACKWARD = torch.ops.sparsevision.indexed_attention_backward.default


def kernel_results(inputs, scale, grad_out):
    out, lse = OP(*inputs, scale)
    return (out, lse, *BACKWARD(grad_out, *inputs, out, lse, scale))


@pytest.mark.parametrize('case', list(adversarial_indices(11)) + ['random'])
@pytest.mark.parametrize('bias_kind', [None, 'per query', 'shared'])
def test_cuda_kernels_equal_the_cpu_kernels(cuda_backend, case, bias_kind):
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        query, key, value, index, bias = random_inputs(queries=30, keys=11, slots=8, dtype=dtype, seed=9)
        if case != 'random':
            query, index, bias = query[:3], adversarial_indices(11)[case], bias[:3]
        slots = index.shape[1]
        bias = {None: None, 'per query': torch.randn(query.shape[0], 2, slots, dtype=dtype),
                'shared': torch.randn(1, 2, slots, dtype=dtype)}[bias_kind]
        inputs = (query, key, value, index, bias)
        grad_out = torch.randn(query.shape[0], 2, 3, dtype=dtype)
        expected = kernel_results(inputs, 0.4, grad_out)
        with cuda_backend:
            got = kernel_results(tuple(None if t is None else cuda_backend.to(t) for t in inputs), 0.4,
                                 cuda_backend.to(grad_out))
        for name, got_tensor, want in zip(['out', 'lse', 'query', 'key', 'value', 'bias'], got, expected):
            torch.testing.assert_close(got_tensor.cpu(), want, rtol=tolerance, atol=tolerance, msg=name)


def test_cuda_kernels_are_reproducible_and_read_bad_entries_as_empty(cuda_backend):
    query, key, value, index, bias = random_inputs(queries=40, keys=20, heads=3, head_dim=8, value_dim=8, slots=9,
                                                   dtype=torch.float32, seed=10)
    grad_out = torch.randn(40, 3, 8)
    corrupted = index.clone()
    corrupted[index < 0] = torch.tensor([20, -7, 2**30], dtype=torch.int32).repeat(40 * 9)[:int((index < 0).sum())]
    moved = [cuda_backend.to(t) for t in (query, key, value)]
    with cuda_backend:
        first = kernel_results((*moved, cuda_backend.to(index), cuda_backend.to(bias)), 0.3, cuda_backend.to(grad_out))
        again = kernel_results((*moved, cuda_backend.to(index), cuda_backend.to(bias)), 0.3, cuda_backend.to(grad_out))
        bad = kernel_results((*moved, cuda_backend.to(corrupted), cuda_backend.to(bias)), 0.3,
                             cuda_backend.to(grad_out))
    for a, b, c in zip(first, again, bad):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_cuda_reduced_precision_accumulates_in_float32(cuda_backend, dtype):
    inputs = random_inputs(queries=20, keys=15, heads=2, head_dim=32, value_dim=16, slots=10, dtype=dtype, seed=11)
    with cuda_backend:
        out, lse = OP(*(None if t is None else cuda_backend.to(t) for t in inputs), 0.2)
    exact_out, exact_lse = reference.indexed_attention(*(t.double() if t.is_floating_point() else t for t in inputs),
                                                       0.2)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(lse.cpu(), exact_lse.float(), rtol=1e-4, atol=1e-4)
    assert ((out.cpu().double() - exact_out).abs() <= exact_out.abs() * 2 * torch.finfo(dtype).eps + 1e-6).all()


def strided_views(inputs):
    """query, key and value as views: unbound from one [rows, 3, H, D] projection (strided rows, read in place), and
    as transposed copies (not packed: the kernels copy them)."""
    query, key, value, index, bias = inputs
    packed = torch.stack([query, key, value], dim=1)
    unbound = packed.unbind(dim=1)
    transposed = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (query, key, value)]
    return (*unbound, index, bias), (*transposed, index, bias)


def test_strided_rows_give_the_same_bits(cuda_backend):
    inputs = random_inputs(queries=25, keys=25, heads=3, head_dim=8, value_dim=8, slots=6, dtype=torch.float32,
                           seed=12)
    grad_out = torch.randn(25, 3, 8)
    expected = kernel_results(inputs, 0.5, grad_out)
    for variant in strided_views(inputs):
        for got, want in zip(kernel_results(variant, 0.5, grad_out), expected):
            assert torch.equal(got, want)
    with cuda_backend:
        on_device = kernel_results(tuple(None if t is None else cuda_backend.to(t) for t in inputs), 0.5,
                                   cuda_backend.to(grad_out))
        for variant in strided_views(tuple(None if t is None else cuda_backend.to(t) for t in inputs)):
            for got, want in zip(kernel_results(variant, 0.5, cuda_backend.to(grad_out)), on_device):
                assert torch.equal(got, want)
